"""One engine replica: an :class:`~openledger.serve.AsyncEngine` in a Ray Serve deployment.

A request names its adapters (registrations ``<name>@<serial>`` with their sources, as
the ingress validated them). They are loaded through Ray Serve's model multiplexing, so
the replica tells Ray which adapters it holds and Ray sends their requests here::

    generate(prompt, params, adapters)
      adapter_set(key)        @serve.multiplexed: LRU of adapters_per_replica keys; a miss
                              registers the key's adapters on the engine (hashing their
                              weights: a load) and may evict the least recently used key
      yield ReplicaInfo       who answers, its load counter (the ingress keeps them)
      yield RequestOutput...  the engine's outputs, step by step

A replica never meters: it knows nothing of keys, receipts or the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ray import serve

from openledger.exceptions import AdapterIdMismatchError
from openledger.gateway.ray.messages import AdapterSource, EngineFacts, ReplicaInfo, adapter_key
from openledger.serve import AsyncEngine, EngineConfig, RequestOutput, SamplingParams
from openledger.serve.request import PromptInput
from openledger.types import to_hash32

if TYPE_CHECKING:
    from openledger.serve.adapters import AdapterSpec

__all__ = ["EngineReplica", "engine_replica_class"]

logger = logging.getLogger("openledger.gateway.ray")


class AdapterLease:
    """A multiplexed key's hold on its adapter registrations in one replica.

    Ray Serve calls ``__del__`` when its LRU evicts the key (in a worker thread); the
    registrations are then released on the replica's event loop.
    """

    def __init__(self, replica: EngineReplica, names: tuple[str, ...]) -> None:
        self.names = names
        self._replica = replica
        self._loop = asyncio.get_running_loop()
        self._released = False

    def __del__(self) -> None:
        # NOTE: Ray calls it on eviction, the garbage collector again later: once only
        if self._released:
            return
        self._released = True
        with contextlib.suppress(RuntimeError):  # NOTE: a closed loop: the replica stops
            self._loop.call_soon_threadsafe(self._replica.release, self.names)


class EngineReplica:
    """The engine behind one Ray Serve replica (see the module's docstring).

    Args:
        model: The base model (alias, folder or hub id).
        engine_config: :class:`~openledger.serve.EngineConfig` fields.
    """

    def __init__(self, model: str, engine_config: dict[str, Any]) -> None:
        self.engine = AsyncEngine(model, EngineConfig(**engine_config))
        self.sources: dict[str, AdapterSource] = {}
        self.adapter_loads = 0
        self._holders: Counter[str] = Counter()
        self._registry_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        context = serve.get_replica_context()
        self.replica_id = str(context.replica_id.unique_id)
        import ray

        self.node_id = str(ray.get_runtime_context().get_node_id())
        logger.info("engine replica %s ready (pid %d)", self.replica_id, os.getpid())

    async def describe(self) -> EngineFacts:
        """The engine's limits and tokenizer, for the ingress's planning."""
        core = self.engine.engine
        config = core.config
        slots = (
            config.max_num_seqs if config.max_adapter_slots is None else config.max_adapter_slots
        )
        return EngineFacts(core.max_model_len, config.max_num_seqs, slots, core.tokenizer)

    async def prepare_adapter(self, name: str, source: str, sha256: str | None) -> AdapterSpec:
        """Fetch and validate an adapter against the base model without registering it.

        Raises:
            AdapterError: As :meth:`~openledger.serve.Engine.add_adapter`.
        """
        store = self.engine.engine.adapters
        if store is None:
            from openledger.exceptions import ConfigError

            raise ConfigError("this engine serves no adapters (EngineConfig.max_adapter_slots=0)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: store.prepare(name, source, sha256=sha256))

    async def generate(
        self, prompt: PromptInput, params: SamplingParams, adapters: Sequence[AdapterSource]
    ) -> AsyncIterator[ReplicaInfo | RequestOutput]:
        """Stream one engine request: a :class:`ReplicaInfo`, then its outputs.

        Raises:
            AdapterError, InvalidRequestError: The adapter or the request is refused
                (before any output).
        """
        for adapter in adapters:
            self.sources[adapter.engine_name] = adapter
        if adapters:
            await self.adapter_set(adapter_key([a.engine_name for a in adapters]))
        # NOTE: the first step submits the request at once, with no await after the lease:
        # the engine holds its adapters from then on, whatever Ray evicts meanwhile
        outputs = self.engine.stream_outputs(prompt, params)
        try:
            first = await anext(outputs)
            yield self.info()
            yield first
            async for output in outputs:
                yield output
        finally:
            aclose = getattr(outputs, "aclose", None)  # NOTE: aborts it in the engine
            if aclose is not None:
                await aclose()

    def info(self) -> ReplicaInfo:
        """This replica's identity and counters."""
        resident = tuple(sorted(name for name, n in self._holders.items() if n > 0))
        return ReplicaInfo(self.replica_id, os.getpid(), self.node_id, self.adapter_loads, resident)

    async def adapter_set(self, key: str) -> AdapterLease:
        """Register a key's adapters (overridden with Ray Serve's multiplexing)."""
        return await self.load(key)

    async def load(self, key: str) -> AdapterLease:
        """Hold the adapters of ``key``, registering those not held yet (a load each).

        Raises:
            AdapterError: A source that cannot be had or is not the adapter expected.
        """
        names = tuple(key.split("+"))
        async with self._registry_lock:
            taken: list[str] = []
            try:
                for name in names:
                    if self._holders[name] == 0:
                        await self._register(self.sources[name])
                    self._holders[name] += 1
                    taken.append(name)
            except BaseException:
                self._drop_task(taken)
                raise
        return AdapterLease(self, names)

    def release(self, names: tuple[str, ...]) -> None:
        """Let go of a lease's registrations (on the event loop, after an eviction)."""
        self._drop_task(list(names))

    def _drop_task(self, names: list[str]) -> None:
        if names:
            task = asyncio.get_running_loop().create_task(self._drop(names))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drop(self, names: list[str]) -> None:
        async with self._registry_lock:
            for name in names:
                self._holders[name] -= 1
                if self._holders[name] <= 0:
                    del self._holders[name]
                    # NOTE: requests admitted with it finish on its weights (AdapterStore)
                    await self.engine.remove_adapter(name)

    async def _register(self, adapter: AdapterSource) -> None:
        spec = await self.engine.add_adapter(
            adapter.engine_name, adapter.source, sha256=adapter.sha256
        )
        found = to_hash32(spec.adapter_id or spec.weights_hash, what="adapter id")
        if found != adapter.adapter_id:
            await self.engine.remove_adapter(adapter.engine_name)
            raise AdapterIdMismatchError(
                f"{adapter.source} now holds adapter {found}, not {adapter.adapter_id} that "
                "the gateway registered; register the adapter again"
            )
        self.adapter_loads += 1
        logger.info("replica %s loaded adapter %s", self.replica_id, adapter.engine_name)


def engine_replica_class(adapters_per_replica: int) -> type[EngineReplica]:
    """:class:`EngineReplica` with Ray Serve's multiplexing over ``adapters_per_replica``
    keys (the bound is fixed when the class is made, as Ray Serve reads it there)."""

    class MultiplexedEngineReplica(EngineReplica):
        @serve.multiplexed(max_num_models_per_replica=adapters_per_replica)  # type: ignore[untyped-decorator]
        async def adapter_set(self, key: str) -> AdapterLease:
            return await self.load(key)

    return MultiplexedEngineReplica
