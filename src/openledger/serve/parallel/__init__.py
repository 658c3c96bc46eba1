"""Tensor parallelism for the serving engine (``EngineConfig.tensor_parallel_size``).

The engine splits the model Megatron-style over ``tensor_parallel_size`` processes that
it starts itself (:class:`~openledger.serve.parallel.group.WorkerGroup`): rank 0 is the
engine's own process (scheduler, sampling, detokenising), the others run the same forward
pass on their share of the weights (:mod:`~openledger.serve.parallel.sharding`), adapters
included (:mod:`~openledger.serve.parallel.lora`). gloo on CPU, NCCL on CUDA.

Names load lazily: the model code imports :mod:`~openledger.serve.parallel.sharding`,
and the runner imports the model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openledger.serve.parallel.group import WorkerGroup
    from openledger.serve.parallel.runner import ParallelModelRunner, start_parallel_runner
    from openledger.serve.parallel.sharding import (
        ShardedModelConfig,
        check_divisible,
        shard_config,
    )

__all__ = [
    "ParallelModelRunner",
    "ShardedModelConfig",
    "WorkerGroup",
    "check_divisible",
    "shard_config",
    "start_parallel_runner",
]

_WHERE = {
    "ParallelModelRunner": "runner",
    "start_parallel_runner": "runner",
    "WorkerGroup": "group",
    "ShardedModelConfig": "sharding",
    "check_divisible": "sharding",
    "shard_config": "sharding",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
