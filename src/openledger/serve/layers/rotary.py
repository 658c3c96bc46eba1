"""Rotary position embeddings (default, linear and llama3 frequency scaling)."""

from __future__ import annotations

import math

import torch
from torch import nn

from openledger.serve.models.config import RopeConfig
from openledger.serve.ops import rowwise_cpu
from openledger.serve.ops.cpu_kernels import cpu_float32

__all__ = ["RotaryEmbedding", "inverse_frequencies"]


def inverse_frequencies(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """Per-pair rotation frequencies ``[head_dim // 2]`` (float32), scaled per ``rope``."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
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
        inv_freq = inverse_frequencies(head_dim, rope)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_sin", torch.stack((emb.cos(), emb.sin())), persistent=False)
        self._positions: torch.Tensor | None = None
        self._cos_sin_at = torch.empty(0)

    def forward(self, positions: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Rotate ``heads [T, n, dim]`` (the query and key heads side by side) at ``positions``.

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
