"""Building the Ray Serve application and running it (``openledger serve --ray``)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from openledger.gateway.config import GatewayConfig
from openledger.gateway.ray import require_ray_extra

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = ["build_application", "run_ray_server"]

logger = logging.getLogger("openledger.gateway.ray")

ENGINE_DEPLOYMENT = "EngineReplica"
INGRESS_DEPLOYMENT = "GatewayIngress"
# NOTE: Ray's resource of its head node; a tiny share pins an actor there
HEAD_NODE_RESOURCE = "node:__internal_head__"
# NOTE: by path: Ray Serve imports the router where the deployment's handles live
AFFINITY_ROUTER = "openledger.gateway.ray.router:AdapterAffinityRouter"


def build_application(config: GatewayConfig) -> Application:
    """The gateway as a Ray Serve application: ``config.ray.replicas`` engine replicas
    behind one ingress. Deploy it with ``serve.run(app, route_prefix="/")``.

    Local paths in ``config`` (model, ledger, keys, adapters, indexes) are made absolute
    here: Ray's workers do not run in this process's folder.

    Raises:
        MissingDependencyError: The ``[ray]`` extra is not installed.
    """
    require_ray_extra()
    from ray import serve

    from openledger.gateway.ray.ingress import GatewayIngress
    from openledger.gateway.ray.replica import engine_replica_class

    config = _absolute_paths(config)
    settings, engine = config.ray, config.engine
    slots = engine.max_num_seqs if engine.max_adapter_slots is None else engine.max_adapter_slots
    routing: dict[str, Any] = {}
    if settings.routing == "adapter":
        routing["request_router_config"] = {
            "request_router_class": AFFINITY_ROUTER,
            "request_router_kwargs": {"spill": settings.spill},
        }
    replica = serve.deployment(
        name=ENGINE_DEPLOYMENT,
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        max_ongoing_requests=settings.max_ongoing_requests or 2 * engine.max_num_seqs,
        graceful_shutdown_timeout_s=config.drain_timeout,
        **routing,
    )(engine_replica_class(settings.adapters_per_replica or max(1, slots)))
    ingress_options: dict[str, Any] = {"num_cpus": settings.ingress_num_cpus}
    if settings.ingress_on_head:
        ingress_options["resources"] = {HEAD_NODE_RESOURCE: 0.001}
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        num_replicas=1,  # NOTE: one fair queue, one writer of the ledger
        ray_actor_options=ingress_options,
        max_ongoing_requests=config.limits.max_concurrent_requests + 64,
        graceful_shutdown_timeout_s=config.drain_timeout,
    )(GatewayIngress)
    engine_app = replica.bind(config.model, engine.model_dump(mode="json"))
    return ingress.bind(config.model_dump_json(), engine_app)


def run_ray_server(config: GatewayConfig) -> None:
    """Serve the gateway on Ray until SIGTERM or Ctrl-C.

    Starts a local Ray instance (``config.ray.address`` None; stopped at the end) or
    joins a cluster (the application is deleted at the end, the cluster left running).
    Ray Serve's HTTP proxy listens on ``config.host``:``config.port``.

    Raises:
        MissingDependencyError: The ``[ray]`` extra is not installed.
    """
    require_ray_extra()
    import ray
    from ray import serve

    settings = config.ray
    local = settings.address is None
    app = build_application(config)
    started = not ray.is_initialized()
    if started:
        cpus = settings.local_cpus() if local else None
        ray.init(address=settings.address, num_cpus=cpus, include_dashboard=False)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, _setter(stop)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(app, name=settings.app_name, route_prefix="/")
        logger.info(
            "gateway on Ray: %d engine replicas, http://%s:%d",
            settings.replicas,
            config.host,
            config.port,
        )
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(settings.app_name, local=local, started=started)


def _stop(app_name: str, *, local: bool, started: bool) -> None:
    """Delete the application (its requests drain), then stop what this process started."""
    import ray
    from ray import serve

    try:
        serve.delete(app_name)
    finally:
        if local:
            serve.shutdown()  # type: ignore[no-untyped-call]
        if started:
            ray.shutdown()
    logger.info("gateway on Ray stopped")


def _setter(stop: threading.Event) -> Any:
    def handle(sig: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping the gateway", sig)
        stop.set()

    return handle


def _absolute_paths(config: GatewayConfig) -> GatewayConfig:
    """``config`` with local paths resolved against this process's folder."""
    fields = config.model_dump()
    fields["ledger"] = str(config.ledger.resolve())
    fields["operator_key_file"] = str(config.key_file.resolve())
    fields["model"] = _local(config.model)
    fields["adapters"] = {name: _local(src) for name, src in config.adapters.items()}
    if config.adapter_resolver is not None:
        fields["adapter_resolver"] = _local(config.adapter_resolver)
    if config.protocol_addresses is not None:
        fields["protocol_addresses"] = str(config.protocol_addresses.resolve())
    fields["attribution_indexes"] = {
        _local(k): _local(v) for k, v in config.attribution_indexes.items()
    }
    return GatewayConfig(**fields)


def _local(source: str) -> str:
    """An existing local path made absolute; anything else (an alias, a URL) as it is."""
    path = Path(source).expanduser()
    return str(path.resolve()) if "://" not in source and path.exists() else source
