"""RMSNorm, computed in float32 the way transformers' Llama does."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in float32.

    Args:
        size: Feature width.
        eps: Added to the mean square.
    """

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x``."""
        dtype = x.dtype
        x32 = x.to(torch.float32)
        # in place where it cannot change a bit: the same values as
        # weight * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype), fewer temporaries
        scale = x32.pow(2).mean(-1, keepdim=True).add_(self.eps).rsqrt_()
        normed = (x32 * scale).to(dtype)
        if self.weight.dtype == normed.dtype:
            return normed.mul_(self.weight)
        return self.weight * normed
