"""How a model is split over tensor-parallel ranks (Megatron-style), and each rank's view.

Column-parallel projections (fused q|k|v, gate|up) keep their input whole and split every
slice's output rows, so each rank's fused weight still reads q|k|v (gate|up): its own
``num_heads / size`` query heads, ``num_kv_heads / size`` key/value heads and
``intermediate_size / size`` columns of gate and of up. Row-parallel projections (o, down)
split their input columns; their partial outputs are summed by one all-reduce, and their
bias is added once (rank 0). The LM head is split by vocabulary rows; the embeddings are
replicated::

    rank r of size n     qkv_proj  [(q + k + v) / n, H]   rows of each slice
                         o_proj    [H, q / n]             columns, then all-reduce
                         gate_up   [(2 I) / n, H]         rows of gate and of up
                         down_proj [H, I / n]             columns, then all-reduce
                         lm_head   [V / n, H]             rows, gathered to rank 0
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from openledger.exceptions import ConfigError
from openledger.serve.models.config import ModelConfig

__all__ = [
    "COLUMN_PARALLEL",
    "ROW_PARALLEL",
    "ShardedModelConfig",
    "check_divisible",
    "shard_config",
    "shard_rows",
    "tensor_parallel_of",
]

COLUMN_PARALLEL = ("qkv_proj", "gate_up_proj")
"""Fused projections whose output rows are split (each slice by itself)."""
ROW_PARALLEL = ("o_proj", "down_proj")
"""Projections whose input columns are split; an all-reduce sums their outputs."""


@dataclass(frozen=True, slots=True)
class ShardedModelConfig(ModelConfig):
    """One rank's view of a :class:`ModelConfig`: its share of the heads and MLP columns.

    ``num_heads``, ``num_kv_heads`` and ``intermediate_size`` are this rank's;
    ``vocab_size``, ``hidden_size`` and ``head_dim`` stay the model's (the embeddings are
    replicated; the LM head keeps ``vocab_size / tp_size`` rows).

    Attributes:
        tp_rank: This rank, ``0 <= tp_rank < tp_size``.
        tp_size: Ranks the model is split over.
    """

    tp_rank: int = 0
    tp_size: int = 1


def check_divisible(config: ModelConfig, size: int) -> None:
    """Refuse a split that does not fall on whole heads, MLP columns and vocabulary rows.

    Raises:
        ConfigError: ``size`` is below 1, or a count does not divide by it (naming each).
    """
    if size < 1:
        raise ConfigError(f"tensor_parallel_size must be >= 1, got {size}")
    counts = {
        "attention heads (num_attention_heads)": config.num_heads,
        "key/value heads (num_key_value_heads)": config.num_kv_heads,
        "MLP columns (intermediate_size)": config.intermediate_size,
        "vocabulary rows (vocab_size)": config.vocab_size,
    }
    bad = [f"{count} {what}" for what, count in counts.items() if count % size]
    if bad:
        raise ConfigError(
            f"tensor_parallel_size={size} must divide the model's {', '.join(bad)}; pick a "
            "size that divides each of them"
        )


def shard_config(config: ModelConfig, rank: int, size: int) -> ShardedModelConfig:
    """Rank ``rank``'s view of ``config`` split over ``size`` ranks.

    Raises:
        ConfigError: As :func:`check_divisible`, or ``rank`` outside ``[0, size)``.
    """
    check_divisible(config, size)
    if not 0 <= rank < size:
        raise ConfigError(f"tensor-parallel rank {rank} is outside [0, {size})")
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    values.update(
        num_heads=config.num_heads // size,
        num_kv_heads=config.num_kv_heads // size,
        intermediate_size=config.intermediate_size // size,
        tp_rank=rank,
        tp_size=size,
    )
    return ShardedModelConfig(**values)


def tensor_parallel_of(config: ModelConfig) -> tuple[int, int]:
    """``(rank, size)`` of a rank's config; ``(0, 1)`` for an unsplit model."""
    if isinstance(config, ShardedModelConfig):
        return config.tp_rank, config.tp_size
    return 0, 1


def shard_rows(tensor: torch.Tensor, rank: int, size: int, dim: int = 0) -> torch.Tensor:
    """Rank ``rank``'s equal share of ``tensor`` along ``dim`` (a view).

    Raises:
        ValueError: The dimension does not divide by ``size``.
    """
    total = tensor.shape[dim]
    if total % size:
        raise ValueError(
            f"dimension {dim} of shape {tuple(tensor.shape)} does not split {size} ways"
        )
    part = total // size
    return tensor.narrow(dim, rank * part, part)
