"""The two collectives a tensor-parallel forward pass needs, over the default process group.

The engine's process group is the default one (``torch.distributed.init_process_group``,
started by :class:`~openledger.serve.parallel.group.WorkerGroup`), so one tensor-parallel
engine runs per process at a time.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum", "gather_columns"]


def all_reduce_sum(partial: torch.Tensor) -> torch.Tensor:
    """Sum a row-parallel projection's partial outputs over the ranks, in place.

    Returns:
        ``partial``, now holding the sum on every rank.
    """
    dist.all_reduce(partial, op=dist.ReduceOp.SUM)
    return partial


def gather_columns(shard: torch.Tensor, size: int) -> torch.Tensor:
    """Rank 0's concatenation of every rank's ``shard [N, C]`` along the columns
    (``[N, size * C]``, rank order); other ranks get their own shard back.

    NOTE: gather, not all-gather: only rank 0 samples, so the others need no logits.
    """
    shard = shard.contiguous()
    if dist.get_rank() != 0:
        dist.gather(shard, None, dst=0)
        return shard
    parts = [torch.empty_like(shard) for _ in range(size)]
    dist.gather(shard, parts, dst=0)
    return torch.cat(parts, dim=1)
