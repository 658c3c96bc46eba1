"""Rotary position embeddings (default, linear, llama3 and Phi-3's LongRoPE scaling).

LongRoPE keeps two tables, one row block per factor set: a sequence longer than
``original_max_position_embeddings`` is computed with the long factors from its first
token, else with the short ones (``BatchMetadata.host_long_context``, decided by the
scheduler: a sequence that grows past that length is recomputed whole in the long regime,
as transformers does when it generates); :meth:`RotaryEmbedding.table_positions` maps a
step's positions onto the rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from openledger.serve.batch import BatchMetadata
from openledger.serve.models.config import RopeConfig
from openledger.serve.ops import rowwise_cpu
from openledger.serve.ops.cpu_kernels import cpu_float32

__all__ = ["RotaryEmbedding", "inverse_frequencies"]


def inverse_frequencies(head_dim: int, rope: RopeConfig, *, long: bool = False) -> torch.Tensor:
    """Per-pair rotation frequencies ``[head_dim // 2]`` (float32), scaled per ``rope``
    (for LongRoPE, by its long factors when ``long``, else its short ones)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    if rope.rope_type == "longrope":
        factors = torch.tensor(rope.long_factor if long else rope.short_factor)
        return 1.0 / (factors * rope.theta**exponents)
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        return _llama3_scaled(inv_freq, rope)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotates query and key heads by their token's position (half-split layout).

    Args:
        head_dim: Width of one head.
        max_positions: Positions precomputed.
        rope: Frequency settings.

    Attributes:
        use_cpu_kernels: Whether the compiled kernel may run (``EngineConfig.cpu_kernels``).
    """

    cos_sin: torch.Tensor
    use_cpu_kernels = True

    def __init__(self, head_dim: int, max_positions: int, rope: RopeConfig):
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.rope = rope
        self.register_buffer("cos_sin", self._table(), persistent=False)
        self._positions: torch.Tensor | None = None
        self._cos_sin_at = torch.empty(0)
        self._batch: BatchMetadata | None = None
        self._table_positions = torch.empty(0)

    def _table(self, device: torch.device | None = None) -> torch.Tensor:
        """``[2, rows, head_dim]`` cos and sin (float32). LongRoPE: the short factors' rows
        for the positions of sequences within the pretraining context, then the long
        factors' rows for every position."""
        tables = []
        for long, rows in self._row_blocks():
            positions = torch.arange(rows, dtype=torch.float32, device=device)
            inv_freq = inverse_frequencies(self.head_dim, self.rope, long=long).to(device)
            freqs = positions[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos(), emb.sin()
            if self.rope.attention_factor != 1.0:
                cos, sin = cos * self.rope.attention_factor, sin * self.rope.attention_factor
            tables.append(torch.stack((cos, sin)))
        return torch.cat(tables, dim=1).contiguous()

    def _row_blocks(self) -> list[tuple[bool, int]]:
        """``(long factors, rows)`` of each block of the table."""
        if self.rope.rope_type != "longrope":
            return [(False, self.max_positions)]
        short = min(self.rope.original_max_position_embeddings, self.max_positions)
        return [(False, short), (True, self.max_positions)]

    def reset(self, device: torch.device) -> None:
        """Recompute the table on ``device`` (after the module was built on ``meta``)."""
        self.cos_sin = self._table(device)
        self._positions, self._batch = None, None

    def table_positions(self, batch: BatchMetadata) -> torch.Tensor:
        """The table row of each of the step's tokens: its position, offset into the long
        rows (LongRoPE) when its sequence is in the long-context regime."""
        if self.rope.rope_type != "longrope":
            return batch.positions
        if batch is not self._batch:
            original = self.rope.original_max_position_embeddings
            longer = [int(long) for long in batch.host_long_context]
            offset = min(original, self.max_positions)  # the short rows come first
            offsets = torch.tensor(longer, device=batch.positions.device) * offset
            lens = torch.tensor(batch.host_query_lens, device=batch.positions.device)
            self._table_positions = batch.positions + offsets.repeat_interleave(lens)
            self._batch = batch
        return self._table_positions

    def forward(self, positions: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Rotate ``heads [T, n, dim]`` (the query and key heads side by side) at ``positions``
        (table rows: :meth:`table_positions` for LongRoPE).

        Returns:
            A new ``[T, n, dim]`` tensor.
        """
        if self.use_cpu_kernels and _kernel_fits(heads, positions, self.cos_sin):
            return rowwise_cpu.rotary(heads, self.cos_sin, positions)
        return self._torch(positions, heads)

    def _torch(self, positions: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """The rotation in torch ops (any device and dtype)."""
        # NOTE: one module serves every layer; look the step's positions up once, with the
        # sign of rotate_half folded into the sine: x*cos + cat(x2, x1)*(-sin1, sin2) is
        # bit for bit x*cos + cat(-x2, x1)*sin, in four ops for all query and key heads.
        if positions is not self._positions or self._cos_sin_at.dtype != heads.dtype:
            self._positions = positions
            cos, sin = self.cos_sin[:, positions].to(heads.dtype)[:, :, None, :]
            half = sin.shape[-1] // 2
            signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            self._cos_sin_at = torch.stack((cos, signed))
        cos, signed_sin = self._cos_sin_at
        out: torch.Tensor = heads * cos
        out += heads.roll(heads.shape[-1] // 2, dims=-1) * signed_sin
        return out


def _kernel_fits(heads: torch.Tensor, positions: torch.Tensor, table: torch.Tensor) -> bool:
    return (
        heads.dim() == 3
        and heads.stride(1) == heads.shape[2]
        and table.is_contiguous()
        and positions.dtype == torch.int64
        and positions.dim() == 1
        and positions.is_contiguous()
        and positions.shape[0] == heads.shape[0]
        and cpu_float32(heads, table)
    )
