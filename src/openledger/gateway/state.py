"""The gateway's shared state: engine, adapters, ledger, meter, metrics, keys, admission."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from openledger.exceptions import (
    AuthenticationError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestFieldError,
)
from openledger.gateway.adapters import ServedAdapters
from openledger.gateway.attribution_worker import AttributionWorker
from openledger.gateway.batching import ArrivalWindow
from openledger.gateway.config import GatewayConfig
from openledger.gateway.engines import ServingEngine
from openledger.gateway.fairness import FairQueue, TokenBuckets, Turn
from openledger.gateway.keys import ApiKey, hash_api_key
from openledger.gateway.ledger import ReceiptLedger
from openledger.gateway.metering import Meter
from openledger.gateway.metrics import GatewayMetrics
from openledger.gateway.receipts import ZERO_ADDRESS
from openledger.types import Address

if TYPE_CHECKING:
    from openledger.chain import Protocol

__all__ = ["Admission", "Caller", "GatewayState"]

logger = logging.getLogger("openledger.gateway")

T = TypeVar("T")
_KEY_CACHE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: its key's public id (``""`` without keys), payer and role."""

    key_id: str
    payer: Address
    admin: bool = False


class Admission:
    """A request's place among those in flight: its limits, its adapter versions, its
    turn in the fair queue. :meth:`release` once it is done (idempotent)."""

    def __init__(self, state: GatewayState, key_id: str, engine_names: tuple[str, ...]) -> None:
        self._state = state
        self._key_id = key_id
        self._engine_names = engine_names
        self.turn: Turn | None = None
        self._released = False

    async def wait_turn(self) -> None:
        """Return once the fair queue lets the request into the engine."""
        if self.turn is not None:
            await self._state.fair.wait(self.turn)

    def charge(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Count tokens served to the request's key (rate limit and fair share)."""
        self._state.fair.charge(self._key_id, completion_tokens)
        self._state.rates.charge(self._key_id, prompt_tokens + completion_tokens)

    def engine_done(self) -> None:
        """Free the request's engine sequences for the next in the fair queue."""
        if self.turn is not None:
            self._state.fair.leave(self.turn)

    def release(self) -> None:
        """Give everything back (idempotent)."""
        if not self._released:
            self._released = True
            self.engine_done()
            self._state.adapters.release(self._engine_names)
            self._state.leave(self._key_id)


class GatewayState:
    """Everything the routes share.

    Args:
        config: The settings.
        engine: The engine every request runs on (in process, or replicas on Ray).
        ledger: Keys and receipts.
        meter: Signs and records receipts.
        adapters: The served adapters.
    """

    def __init__(
        self,
        config: GatewayConfig,
        engine: ServingEngine,
        ledger: ReceiptLedger,
        meter: Meter,
        adapters: ServedAdapters,
    ) -> None:
        self.config = config
        self.engine = engine
        self.ledger = ledger
        self.meter = meter
        self.adapters = adapters
        limits = config.limits
        capacity = limits.engine_sequences or engine.engine.config.max_num_seqs
        self.fair = FairQueue(capacity, enabled=limits.fair_share)
        self.rates = TokenBuckets(limits.tokens_per_minute)
        scheduler = engine.engine.scheduler
        self.metrics = GatewayMetrics(
            lambda: len(scheduler.running),
            lambda: len(scheduler.waiting) + self.fair.num_waiting,  # NOTE: both queues
            ledger.count_receipts(),
            ledger.count_pending,
        )
        self.window = ArrivalWindow(
            config.batch_window,
            config.batch_window_limit,
            lambda: not scheduler.running and not scheduler.waiting,
        )
        self.draining = False
        self.started = int(time.time())
        self._in_flight = 0
        self._per_key: Counter[str] = Counter()
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        self._key_lookups: dict[str, asyncio.Future[ApiKey | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.attribution: AttributionWorker | None = None
        self._protocol: Protocol | None = None

    def protocol(self) -> Protocol | None:
        """The protocol of ``chain_url`` and ``protocol_addresses`` (connected on first use),
        or None when they are not set."""
        config = self.config
        if self._protocol is None and config.chain_url and config.protocol_addresses:
            from openledger.chain import Protocol, connect

            addresses = json.loads(config.protocol_addresses.read_text(encoding="utf-8"))
            self._protocol = Protocol.at(connect(config.chain_url), addresses)
        return self._protocol

    async def authenticate(self, authorization: str | None) -> Caller:
        """Return the caller of a request from its ``Authorization: Bearer`` header.

        Raises:
            AuthenticationError: No key, or a key the ledger does not hold (or revoked).
        """
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if not self.config.require_api_key and not key:
            return Caller("", ZERO_ADDRESS)
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError(
                "no API key: send 'Authorization: Bearer <key>' (create one with "
                "`openledger keys create --ledger PATH`)"
            )
        record = await self._find_key(key)
        if record is None:
            raise AuthenticationError("the API key is not valid (unknown or revoked)")
        return Caller(record.key_id, record.payer, record.role == "admin")

    async def authenticate_admin(self, authorization: str | None) -> Caller:
        """Return the caller of an admin request.

        Raises:
            AuthenticationError: No key, or an unknown one (HTTP 401), even without
                ``require_api_key``.
            PermissionDeniedError: A valid key that is not an admin key (HTTP 403).
        """
        if not (authorization or "").partition(" ")[2].strip():
            raise AuthenticationError(
                "the adapter endpoints need an admin key: send 'Authorization: Bearer <key>' "
                "(create one with `openledger keys create --admin --ledger PATH`)"
            )
        caller = await self.authenticate(authorization)
        if not caller.admin:
            raise PermissionDeniedError(
                "this key may not manage adapters; use a key created with "
                "`openledger keys create --admin`"
            )
        return caller

    def admit(
        self, caller: Caller, engine_names: tuple[str, ...], need: int, prompt_tokens: float
    ) -> Admission:
        """Take a place for a new request and queue it for the engine.

        Args:
            caller: Who sends it.
            engine_names: The adapter versions it runs with (held until it is released).
            need: Its engine sequences (choices).
            prompt_tokens: Its prompt tokens as estimated for the fair queue.

        Raises:
            OverloadedError: Draining, or the gateway holds its most requests.
            RateLimitError: The caller's key holds its most requests.
            TokenRateLimitError: The caller's key has used its tokens per minute.
        """
        limits = self.config.limits
        if self.draining:
            raise OverloadedError("the server is shutting down; retry on another replica")
        if self._in_flight >= limits.max_concurrent_requests:
            raise OverloadedError(
                f"the server is serving its most requests ({limits.max_concurrent_requests}); "
                "retry shortly"
            )
        if self._per_key[caller.key_id] >= limits.max_concurrent_per_key:
            raise RateLimitError(
                f"this key has {limits.max_concurrent_per_key} requests in flight, its most; "
                "wait for one to finish"
            )
        self.rates.check(caller.key_id)
        self._in_flight += 1
        self._per_key[caller.key_id] += 1
        self.metrics.in_flight.set(self._in_flight)
        self.adapters.hold(engine_names)
        admission = Admission(self, caller.key_id, engine_names)
        admission.turn = self.fair.join(caller.key_id, need, prompt_tokens)
        return admission

    def leave(self, key_id: str) -> None:
        """Free a place taken by :meth:`admit` (call through :meth:`Admission.release`)."""
        self._in_flight -= 1
        self._per_key[key_id] -= 1
        if self._per_key[key_id] <= 0:
            del self._per_key[key_id]
        self.metrics.in_flight.set(self._in_flight)

    def resolve(self, model: str, mix: Mapping[str, float] | None) -> dict[str, float]:
        """Return the adapters a request uses, ``{name: weight}`` (empty: the base model).

        Raises:
            ModelNotFoundError: ``model`` is neither the base model nor a served adapter, or
                the mix names an adapter that is not served.
            RequestFieldError: A mix beside a ``model`` other than the base model.
        """
        base = self.config.model_name
        if mix is not None:
            if model != base:
                raise RequestFieldError(
                    f"'adapters' mixes adapters on the base model: set model to {base!r}", "model"
                )
            unknown = sorted(set(mix) - set(self.adapters.current))
            if unknown:
                raise ModelNotFoundError(f"adapters not served here: {', '.join(unknown)}")
            return dict(mix)
        if model == base:
            return {}
        if model in self.adapters.current:
            return {model: 1.0}
        raise ModelNotFoundError(
            f"the model {model!r} does not exist here; GET /v1/models lists the base model "
            "and its adapters"
        )

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task that outlives its request (shutdown waits for it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def shutdown(self) -> None:
        """Refuse new requests, finish background writes, stop the engine, close the ledger."""
        self.draining = True
        if self.attribution is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.attribution.stop)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.adapters.close()
        await self.engine.close()
        self.meter.close()
        self.ledger.close()
        logger.info("gateway stopped")

    async def _find_key(self, key: str) -> ApiKey | None:
        """The key's record, from a cache that holds each answer for
        ``_KEY_CACHE_SECONDS`` (a revoked key is refused within that time).

        Concurrent requests with the same key share one ledger lookup, and a key in use is
        looked up again in the background once its answer is half that old, so a steady
        stream of requests never waits for the ledger.
        """
        now = time.monotonic()
        digest = hash_api_key(key)
        cached = self._keys.get(digest)
        if cached is not None and now - cached[0] < _KEY_CACHE_SECONDS:
            if now - cached[0] >= _KEY_CACHE_SECONDS / 2 and digest not in self._key_lookups:
                self._look_up_key(key, digest)
            return cached[1]
        lookup = self._key_lookups.get(digest) or self._look_up_key(key, digest)
        return await asyncio.shield(lookup)

    def _look_up_key(self, key: str, digest: str) -> asyncio.Future[ApiKey | None]:
        """Start the one ledger lookup of a key; its answer replaces the cached one."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(None, self.ledger.find_key, key)
        self._key_lookups[digest] = lookup

        def done(future: asyncio.Future[ApiKey | None]) -> None:
            del self._key_lookups[digest]
            if future.cancelled() or future.exception() is not None:
                return  # NOTE: the requests that await it see the error
            record = future.result()
            if record is not None:
                self._keys[digest] = (started, record)
            else:
                self._keys.pop(digest, None)

        lookup.add_done_callback(done)
        return lookup
