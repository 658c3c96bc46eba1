"""The ingress's engine: Ray Serve's engine replicas behind the gateway's engine protocol.

:class:`RemoteEngine` is a :class:`~openledger.gateway.engines.ServingEngine`, so the
gateway's routes, planning, fair queue and metering run on it unchanged. Each choice is
one streaming call to a replica, with its adapters as the multiplexed model id::

    stream_outputs(prompt, params)
      try 1: replica A ... lost before the first token (its process died)
      try 2: replica B -> RequestOutput, RequestOutput, ...   (what the client gets)

A replica lost after the first token ends the choice with
:class:`~openledger.exceptions.EngineDeadError` (HTTP 503, retryable): a stream then ends
with an error event and a receipt for what it delivered. Adapter registrations live here,
outside the replicas: a restarted replica learns them again from the next request.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ray import exceptions as ray_errors
from ray.serve.exceptions import BackPressureError

from openledger.exceptions import AdapterNotFoundError, EngineDeadError, OverloadedError
from openledger.gateway.ray.config import RayServeConfig
from openledger.gateway.ray.messages import AdapterSource, EngineFacts, ReplicaInfo, adapter_key
from openledger.serve import EngineConfig, RequestOutput, SamplingParams
from openledger.serve.request import PromptInput
from openledger.types import to_hash32

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

    from openledger.serve.adapters import AdapterSpec

__all__ = ["RemoteEngine", "ReplicaSeen"]

logger = logging.getLogger("openledger.gateway.ray")

# NOTE: the replica (its process, its node) is gone: nothing it did reached the client
_LOST = (
    ray_errors.RayActorError,
    ray_errors.ActorUnavailableError,
    ray_errors.WorkerCrashedError,
    ray_errors.NodeDiedError,
)


class _Count:
    """A size the gateway reads with ``len`` (requests running or waiting remotely)."""

    def __init__(self) -> None:
        self.value = 0

    def __len__(self) -> int:
        return self.value


class _Queues:
    def __init__(self) -> None:
        self.running = _Count()
        self.waiting = _Count()


@dataclass(frozen=True, slots=True)
class _Core:
    config: EngineConfig
    scheduler: _Queues
    tokenizer: Any
    max_model_len: int


@dataclass(slots=True)
class ReplicaSeen:
    """What the ingress last heard from one replica.

    Attributes:
        info: Its latest :class:`ReplicaInfo`.
        requests: Engine requests it has started for this ingress.
        last_seen: Unix seconds of its latest answer.
    """

    info: ReplicaInfo
    requests: int
    last_seen: float


class RemoteEngine:
    """Ray Serve engine replicas as one engine for the gateway (see the module docstring).

    Args:
        handle: The engine replicas' deployment handle.
        facts: One replica's engine limits and tokenizer (every replica has the same).
        settings: Replicas, routing and retries.
        engine_config: The replicas' engine settings.
    """

    def __init__(
        self,
        handle: DeploymentHandle[Any],
        facts: EngineFacts,
        settings: RayServeConfig,
        engine_config: EngineConfig,
    ) -> None:
        self._handle = handle
        self.settings = settings
        # NOTE: the fair queue admits the sequences of every replica together
        sequences = facts.max_num_seqs * settings.replicas
        config = engine_config.model_copy(update={"max_num_seqs": sequences})
        self._core = _Core(config, _Queues(), facts.tokenizer, facts.max_model_len)
        self.sources: dict[str, AdapterSource] = {}
        self.replicas: dict[str, ReplicaSeen] = {}
        self.retried = 0  # NOTE: choices sent again after a replica was lost before a token
        self.cut = 0  # choices ended by a replica lost after their first token

    @property
    def engine(self) -> _Core:
        """Settings, queue sizes and tokenizer, as the gateway reads an engine's."""
        return self._core

    async def add_adapter(
        self, name: str, source: str | os.PathLike[str], *, sha256: str | None = None
    ) -> AdapterSpec:
        """Validate an adapter on a replica and register it here (replicas load it on use).

        Raises:
            AdapterError: The source cannot be had, or is not an adapter of the base model.
        """
        try:
            spec: AdapterSpec = await self._handle.prepare_adapter.remote(name, str(source), sha256)
        except ray_errors.RayTaskError as exc:
            raise _cause(exc) from None
        adapter_id = to_hash32(spec.adapter_id or spec.weights_hash, what="adapter id")
        self.sources[name] = AdapterSource(name, str(source), sha256, adapter_id)
        return spec

    async def remove_adapter(self, name: str) -> None:
        """Forget a registration; replicas drop it as their least recently used."""
        self.sources.pop(name, None)

    async def close(self) -> None:
        """Nothing to stop here: Ray Serve stops the replicas."""

    async def stream_outputs(
        self, prompt: PromptInput, params: SamplingParams | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield one choice's outputs from a replica, retrying lost replicas before the
        first output.

        Raises:
            EngineDeadError: The replica was lost after the first output, or no replica
                answered in ``retries`` + 1 tries (HTTP 503: retry).
            AdapterNotFoundError: An adapter that is not registered.
            InvalidRequestError, AdapterError: The replica refused the request.
        """
        params = params or SamplingParams()
        adapters = self._adapters_of(params.adapter)
        queues = self._core.scheduler
        queues.waiting.value += 1
        running = False
        try:
            for attempt in range(self.settings.retries + 1):
                if attempt:
                    await asyncio.sleep(self.settings.retry_backoff * 2 ** (attempt - 1))
                async with aclosing(self._try(prompt, params, adapters)) as outputs:
                    async for output in outputs:
                        if output is None:
                            break  # NOTE: lost before its first output: try another replica
                        if not running:
                            running = True
                            queues.waiting.value -= 1
                            queues.running.value += 1
                        yield output
                    else:
                        return
            raise EngineDeadError(
                f"no engine replica answered in {self.settings.retries + 1} tries (replicas "
                "were lost or are restarting); retry shortly"
            )
        finally:
            (queues.running if running else queues.waiting).value -= 1

    async def _try(
        self, prompt: PromptInput, params: SamplingParams, adapters: tuple[AdapterSource, ...]
    ) -> AsyncGenerator[RequestOutput | None, None]:
        """One replica's outputs; a single None if it was lost before the first."""
        key = adapter_key([a.engine_name for a in adapters])
        routed = key if self.settings.routing != "any" else ""
        handle = self._handle.options(stream=True, multiplexed_model_id=routed)
        call = _own_request(handle.generate.remote, prompt, params, adapters)
        stream = cast("DeploymentResponseGenerator[Any]", call)
        produced = done = False
        try:
            async for item in stream:
                if isinstance(item, ReplicaInfo):
                    self._seen(item)
                    continue
                produced = True
                yield item
            done = True
        except _LOST as exc:
            if produced:
                self.cut += 1
                raise EngineDeadError(
                    "the engine replica serving this request was lost after it had produced "
                    "tokens; retry the request"
                ) from exc
            logger.warning("an engine replica was lost before answering: %s", _first_line(exc))
            self.retried += 1
            yield None
        except ray_errors.RayTaskError as exc:
            raise _cause(exc) from None
        except BackPressureError as exc:
            raise OverloadedError(f"every engine replica is full ({exc}); retry") from None
        finally:
            if not done:
                stream.cancel()  # type: ignore[no-untyped-call]  # NOTE: aborts it there

    def _adapters_of(self, adapter: str | Mapping[str, float] | None) -> tuple[AdapterSource, ...]:
        names = [] if adapter is None else [adapter] if isinstance(adapter, str) else list(adapter)
        missing = [n for n in names if n not in self.sources]
        if missing:
            raise AdapterNotFoundError(f"adapters not registered: {', '.join(sorted(missing))}")
        return tuple(self.sources[n] for n in sorted(names))

    def _seen(self, info: ReplicaInfo) -> None:
        seen = self.replicas.get(info.replica_id)
        requests = 1 if seen is None else seen.requests + 1
        self.replicas[info.replica_id] = ReplicaSeen(info, requests, time.time())

    @property
    def adapter_loads(self) -> int:
        """Adapter loads over every replica this ingress has heard from."""
        return sum(seen.info.adapter_loads for seen in self.replicas.values())


def _own_request(remote: Any, *args: Any) -> Any:
    """Call ``remote`` as a request of its own in Ray Serve's router.

    A handle call made while serving an HTTP request inherits that request's internal id,
    and Ray Serve's router keys its pending calls by it: two choices of one request (a
    completion with several prompts, ``n`` > 1) would share one entry, one of them would
    never be assigned, and its routing task would spin on the ingress's event loop. Each
    call therefore gets a fresh internal id (the request id, for logs, is kept).
    """
    from ray.serve import context as serve_context

    variable: contextvars.ContextVar[Any] | None = getattr(
        serve_context, "_serve_request_context", None
    )
    current = variable.get() if variable is not None else None
    if variable is None or current is None or not hasattr(current, "_internal_request_id"):
        return remote(*args)  # NOTE: outside a request: Ray Serve makes a fresh id
    held = variable

    def call() -> Any:
        held.set(dataclasses.replace(current, _internal_request_id=str(uuid.uuid4())))
        return remote(*args)

    return contextvars.copy_context().run(call)


def _cause(exc: ray_errors.RayTaskError) -> BaseException:
    """The exception a replica raised (Ray wraps it with the remote traceback)."""
    cause = exc.cause
    return cause if isinstance(cause, BaseException) else exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
