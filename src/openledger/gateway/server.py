"""Building the gateway (engine, adapters, ledger, operator key) and running it on uvicorn.

SIGTERM (or Ctrl-C) stops accepting connections, lets requests in flight finish for up to
``drain_timeout`` seconds (then aborts them, metering what they produced), closes the
ledger and returns; ``openledger serve`` then exits 0.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import signal
import time
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from openledger.exceptions import AdapterError, AdapterIdMismatchError, MissingDependencyError
from openledger.gateway.adapters import ServedAdapter, ServedAdapters
from openledger.gateway.attribution_worker import AttributionWorker
from openledger.gateway.config import GatewayConfig
from openledger.gateway.engines import ServingEngine
from openledger.gateway.ledger import ReceiptLedger, pin_settings
from openledger.gateway.metering import Meter, load_operator_key
from openledger.gateway.receipts import receipt_domain
from openledger.serve import AsyncEngine
from openledger.types import to_hash32

if TYPE_CHECKING:
    from fastapi import FastAPI

    from openledger.gateway.state import GatewayState

__all__ = ["create_app", "restore_adapters", "run_server"]

logger = logging.getLogger("openledger.gateway")

_SERVER_EXTRA = ("fastapi", "uvicorn", "prometheus_client")


def require_server_extra() -> None:
    """Raise unless the ``[server]`` extra (FastAPI, uvicorn, prometheus-client) is installed.

    Raises:
        MissingDependencyError: Naming the missing packages and the extra to install.
    """
    missing = [name for name in _SERVER_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"the gateway needs {', '.join(missing)}: pip install 'openledger[server]'"
        )


def create_app(
    config: GatewayConfig | None = None, *, engine: AsyncEngine | None = None
) -> FastAPI:
    """Build the gateway's ASGI app (FastAPI) over one :class:`~openledger.serve.AsyncEngine`.

    Loads the base model (unless ``engine`` is given), registers the configured adapters
    on it, opens the ledger and the operator key. More adapters are loaded, replaced and
    removed at run time through ``/v1/adapters`` (admin keys) or, with
    ``adapter_resolver``, on a request's first use of a name.

    Args:
        config: Settings; defaults when None.
        engine: An engine to serve instead of building one from ``config``.

    Returns:
        The application; run it with any ASGI server (``openledger serve`` uses uvicorn).

    Raises:
        MissingDependencyError: The ``[server]`` extra is not installed.
        ConfigError: Invalid settings, or an unusable operator key file.
        LedgerError: The ledger file is unusable.
    """
    require_server_extra()
    from openledger.gateway.app import build_app

    return build_app(build_state(config or GatewayConfig(), engine))


def build_state(config: GatewayConfig, engine: ServingEngine | None = None) -> GatewayState:
    """Open the ledger and operator key, build the engine, register the adapters.

    An in-process engine gets ``config.adapters`` now, before it serves, then the adapters
    the admin API had loaded before a restart (the ledger's saved registrations); any other
    engine (replicas on Ray) gets both from its owner (:func:`restore_adapters`).
    """
    from openledger.gateway.state import GatewayState

    operator = load_operator_key(config.key_file)
    ledger = ReceiptLedger(config.ledger)
    try:
        if engine is None:
            engine = AsyncEngine(config.model, config.engine)
        adapters = ServedAdapters(engine, config.adapter_resolver, config.drain_timeout)
        if isinstance(engine, AsyncEngine):
            _register_adapters(engine, adapters, config.adapters)
            _restore_adapters(engine, adapters, ledger, config.adapters)
            _warm_adapters(engine, adapters)
    except BaseException:
        ledger.close()
        raise
    domain = receipt_domain(config.chain_id, config.verifying_contract)
    try:
        pin_settings(ledger, operator.address, config.epoch_seconds, domain)
    except BaseException:
        ledger.close()
        raise
    meter = Meter(ledger, operator, domain, config.epoch_seconds)
    if config.require_api_key and ledger.count_keys() == 0:
        logger.warning(
            "the ledger %s holds no API key: every request gets 401 until one is created "
            "with `openledger keys create --ledger %s`",
            config.ledger,
            config.ledger,
        )
    logger.info("receipts are signed by operator %s", operator.address)
    state = GatewayState(config, engine, ledger, meter, adapters)
    if config.attribution_indexes:
        state.attribution = AttributionWorker(
            ledger, config.index_folders(), sample=config.attribution_sample
        )
        state.attribution.start(config.attribution_interval)
    return state


def _register_adapters(
    engine: AsyncEngine, served: ServedAdapters, adapters: dict[str, str]
) -> None:
    """Register ``{name: source}`` on the engine (before it serves) as first versions.

    An adapter without a manifest is identified by the keccak256 of its weights file (the
    id a manifest would carry, and the hash the store checks at every load).
    """
    for name, source in adapters.items():
        engine_name = served.engine_name(name)
        spec = engine.engine.add_adapter(engine_name, source)
        adapter_id = to_hash32(spec.adapter_id or spec.weights_hash, what="adapter id")
        served.adopt(ServedAdapter(name, engine_name, adapter_id, str(source), int(time.time())))
        logger.info("adapter %s from %s: id %s", name, source, adapter_id)


def _warm_adapters(engine: AsyncEngine, served: ServedAdapters) -> None:
    """Read the registered adapters into host memory before serving (as many as its
    budget holds), so no first request reads weights on the event loop. An adapter that
    cannot be read now is left to its first request, which is refused as it always was."""
    store = engine.engine.adapters
    if store is None or not served.current:
        return
    start = time.perf_counter()
    names = [adapter.engine_name for adapter in served.current.values()]
    try:
        warmed = store.warm(names)
    except AdapterError as exc:  # NOTE: as before, its requests will be refused with this
        logger.warning("adapters not read ahead: %s", exc)
        return
    logger.info(
        "%d of %d adapters read into host memory in %.2f s",
        len(warmed),
        len(names),
        time.perf_counter() - start,
    )


def run_server(config: GatewayConfig) -> None:
    """Serve the gateway on ``config.host``:``config.port`` until SIGTERM or Ctrl-C.

    Raises:
        MissingDependencyError: The ``[server]`` extra is not installed.
    """
    require_server_extra()
    import uvicorn

    app = create_app(config)
    _freeze_startup_objects()
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=max(1, round(config.drain_timeout)),
        access_log=False,
    )
    server = _draining_server_class()(server_config, app.state.gateway)
    # NOTE: uvicorn re-raises the signal that stopped it once it is done; a handler of
    # ours takes it, so a drained shutdown exits 0 instead of dying by SIGTERM.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _freeze_startup_objects() -> None:
    """Keep what start-up allocated (modules, the model, the tokenizer) out of the garbage
    collector's scans for the life of the server.

    A full collection walks every tracked object: with the engine loaded that is over a
    quarter of a second on a 2-core CPU, taken on the event loop whenever the oldest
    generation fills, so a request in flight then waits that long. Objects made while
    serving are collected as before.
    """
    gc.collect()
    gc.freeze()


def _ignore(sig: int, frame: FrameType | None) -> None:
    logger.info("signal %d handled: the gateway has stopped", sig)


def _draining_server_class() -> Any:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server that marks the gateway draining as soon as a signal arrives."""

        def __init__(self, config: uvicorn.Config, state: GatewayState) -> None:
            super().__init__(config)
            self.gateway = state

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.gateway.draining = True
            super().handle_exit(sig, frame)

    return DrainingServer


def _restore_adapters(
    engine: AsyncEngine,
    served: ServedAdapters,
    ledger: ReceiptLedger,
    configured: Mapping[str, str],
) -> None:
    """Serve again what ``/v1/adapters`` had loaded before a restart (in-process engine).

    See :func:`restore_adapters`; this is its synchronous twin for an engine that does not
    serve yet.
    """
    for name, source, adapter_id, sha256 in _saved(ledger, configured):
        engine_name = served.engine_name(name)
        try:
            spec = engine.engine.add_adapter(engine_name, source, sha256=sha256)
        except AdapterError as exc:
            _drop(ledger, name, source, str(exc))
            continue
        got = to_hash32(spec.adapter_id or spec.weights_hash, what="adapter id")
        if got != adapter_id:
            engine.engine.remove_adapter(engine_name)
            _drop(ledger, name, source, f"it now holds adapter {got}, not {adapter_id}")
            continue
        served.adopt(ServedAdapter(name, engine_name, got, source, int(time.time())))
        logger.info("adapter %s served again from %s: id %s", name, source, got)


async def restore_adapters(
    served: ServedAdapters, ledger: ReceiptLedger, configured: Mapping[str, str]
) -> None:
    """Serve again the adapters ``/v1/adapters`` had loaded before a restart.

    Each saved registration is loaded from its source again and must hold the weights it
    was saved with (its adapter id): receipts name that id. One that cannot be loaded, or
    whose source now holds other weights, is not served, is forgotten (its source is
    logged, to load it again by hand), and the others still load. A name the configuration
    gives (``config.adapters``) is served as configured; a registration saved for it at
    run time is forgotten.
    """
    for name, source, adapter_id, sha256 in _saved(ledger, configured):
        try:
            await served.put(name, source, sha256=sha256, adapter_id=adapter_id)
        except (AdapterError, AdapterIdMismatchError) as exc:
            _drop(ledger, name, source, str(exc))
            continue
        logger.info("adapter %s served again from %s: id %s", name, source, adapter_id)


def _saved(
    ledger: ReceiptLedger, configured: Mapping[str, str]
) -> list[tuple[str, str, str, str | None]]:
    """The saved registrations to restore; those of configured names are forgotten."""
    restore = []
    for name, source, adapter_id, sha256 in ledger.saved_adapters():
        if name in configured:
            ledger.forget_adapter(name)
            logger.warning(
                "adapter %s: the configuration names it (%s); the registration saved at run "
                "time (%s) is forgotten",
                name,
                configured[name],
                source,
            )
            continue
        restore.append((name, source, adapter_id, sha256))
    return restore


def _drop(ledger: ReceiptLedger, name: str, source: str, reason: str) -> None:
    ledger.forget_adapter(name)
    logger.error(
        "adapter %s could not be served again from %s (%s); it is no longer served: load "
        "it again through /v1/adapters",
        name,
        source,
        reason,
    )
