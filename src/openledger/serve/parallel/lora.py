"""LoRA adapters split to match a tensor-parallel model.

Every rank installs the same adapters in the same slots; each keeps the part that meets
its share of the base weights:

==================  =====================================  ================================
projection          ``lora_A``                             ``lora_B``
==================  =====================================  ================================
column-parallel     replicated (the input is whole)        this rank's output rows of each
(q|k|v, gate|up)                                           slice (q, k, v; gate, up)
row-parallel        this rank's input columns              replicated
(o, down)
==================  =====================================  ================================

A row-parallel rank's ``x_r A_r^T B^T`` is a partial sum like its base output
``x_r W_r^T``; both are summed by the one all-reduce after the projection. A
``modules_to_save`` copy of ``lm_head`` keeps this rank's vocabulary rows (like the base
head); a copy of ``embed_tokens`` is replicated (like the base embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from openledger.serve.layers.linear import Linear
from openledger.serve.ops.lora_torch import LoraSlice, LoraWeights
from openledger.serve.parallel.sharding import COLUMN_PARALLEL, ROW_PARALLEL, shard_rows

__all__ = ["shard_adapter", "shard_lora_weights"]


def shard_lora_weights(
    weights: LoraWeights, linear: Linear, kind: str, rank: int, size: int
) -> LoraWeights:
    """Rank ``rank``'s part of one projection's update (``kind``: the projection's last
    name, e.g. ``"qkv_proj"``); ``linear`` is this rank's projection.

    Raises:
        ValueError: A DoRA update (its factors need the whole base weight), or a
            projection that is neither column- nor row-parallel.
    """
    if weights.dora is not None:
        raise ValueError("DoRA updates are not split over tensor-parallel ranks")
    if kind in ROW_PARALLEL:
        a = shard_rows(weights.a, rank, size, dim=1).contiguous()
        return LoraWeights(a, weights.slices)
    if kind not in COLUMN_PARALLEL:
        raise ValueError(f"{kind!r} is neither column- nor row-parallel")
    slices: list[LoraSlice] = []
    full_start = local_start = 0
    for local in linear.output_sizes:  # NOTE: keep each slice's rows that fall in this rank's
        first = full_start + rank * local
        for s in weights.slices:
            lo, hi = max(s.col_start, first), min(s.col_end, first + local)
            if lo < hi:
                b = s.b[lo - s.col_start : hi - s.col_start].contiguous()
                col = local_start + lo - first
                slices.append(LoraSlice(s.rank_start, s.rank_end, col, col + hi - lo, b))
        full_start += local * size
        local_start += local
    return LoraWeights(weights.a, tuple(slices))


def shard_adapter(
    model: nn.Module,
    modules: Mapping[str, LoraWeights] | None,
    heads: Mapping[str, torch.Tensor] | None,
    rank: int,
    size: int,
) -> tuple[dict[str, LoraWeights] | None, dict[str, torch.Tensor] | None]:
    """Rank ``rank``'s part of an adapter (weights by engine module name, and its
    ``modules_to_save`` copies), for this rank's ``model``."""
    if modules is None:
        return None, None
    parts = {
        name: shard_lora_weights(weights, _linear(model, name), name.rsplit(".", 1)[-1], rank, size)
        for name, weights in modules.items()
    }
    if heads is None:
        return parts, None
    own = {
        name: shard_rows(table, rank, size).contiguous() if name == "lm_head" else table
        for name, table in heads.items()
    }
    return parts, own


def _linear(model: nn.Module, name: str) -> Linear:
    module = model.get_submodule(name)
    if not isinstance(module, Linear):
        raise TypeError(f"{name} is no projection of the model")
    return module
