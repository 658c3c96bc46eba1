"""Serving: a paged-KV-cache engine with continuous batching for Llama-family models.

::

    from openledger.serve import Engine, SamplingParams
    engine = Engine("smollm2-135m-instruct")
    outputs = engine.generate(["The capital of France is"], SamplingParams(max_tokens=8))
    for piece in engine.stream([{"role": "user", "content": "Hi!"}]):
        ...

Layout (pure-Python bookkeeping on top, torch below)::

    Engine / AsyncEngine  ->  Scheduler  ->  BlockPool, SequenceState      (no torch)
                          ->  ModelRunner ->  models/ -> layers/ -> ops/   (torch, Triton)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openledger.serve.async_engine import AsyncEngine
from openledger.serve.config import EngineConfig
from openledger.serve.engine import Engine
from openledger.serve.outputs import RequestMetrics, RequestOutput
from openledger.serve.params import SamplingParams
from openledger.serve.sequence import FinishReason

# NOTE: what users touch; the scheduler, block pool and sequence bookkeeping stay
# importable from their modules (openledger.serve.scheduler, .block_pool, .sequence).
__all__ = [
    "AsyncEngine",
    "Engine",
    "EngineConfig",
    "FinishReason",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "merge_adapters",
]

if TYPE_CHECKING:
    from openledger.serve.adapters.merge import merge_adapters


def __getattr__(name: str) -> Any:
    # NOTE: merging needs torch; the rest of this package imports without it.
    if name == "merge_adapters":
        from openledger.serve.adapters.merge import merge_adapters

        return merge_adapters
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
