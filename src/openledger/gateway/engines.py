"""What the gateway asks of the engine behind it.

The routes, planning, fair queue, metering and adapter lifecycle touch an engine only
through :class:`ServingEngine`: :class:`~openledger.serve.AsyncEngine` in one process, or
:class:`~openledger.gateway.ray.RemoteEngine` in front of Ray Serve replicas. Reading the
protocol is reading everything one gateway needs of the engines it serves from::

    ServingEngine.stream_outputs(prompt, params)        one choice's outputs, step by step
    ServingEngine.add_adapter / remove_adapter          an adapter version's registration
    ServingEngine.close()                               stop; requests in flight are aborted
    ServingEngine.engine.config.max_num_seqs            sequences the fair queue admits
    ServingEngine.engine.scheduler.running / .waiting   sizes, for metrics and batch windows
    ServingEngine.engine.tokenizer / .max_model_len     token-id prompts, logprobs, limits
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sized
from typing import TYPE_CHECKING, Any, Protocol

from openledger.serve import EngineConfig, RequestOutput, SamplingParams
from openledger.serve.request import PromptInput

if TYPE_CHECKING:
    from openledger.serve.adapters import AdapterSpec

__all__ = ["EngineCore", "QueueSizes", "ServingEngine"]


class QueueSizes(Protocol):
    """An engine's requests running and waiting (only their sizes are read)."""

    @property
    def running(self) -> Sized: ...

    @property
    def waiting(self) -> Sized: ...


class EngineCore(Protocol):
    """The engine's settings, queues and tokenizer."""

    @property
    def config(self) -> EngineConfig: ...

    @property
    def scheduler(self) -> QueueSizes: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def max_model_len(self) -> int: ...


class ServingEngine(Protocol):
    """An engine the gateway serves from (see the module's docstring)."""

    @property
    def engine(self) -> EngineCore: ...

    def stream_outputs(
        self, prompt: PromptInput, params: SamplingParams | None = None
    ) -> AsyncIterator[RequestOutput]: ...

    async def add_adapter(
        self, name: str, source: str | os.PathLike[str], *, sha256: str | None = None
    ) -> AdapterSpec: ...

    async def remove_adapter(self, name: str) -> None: ...

    async def close(self) -> None: ...
