"""RMSNorm, computed in float32 the way transformers' Llama (and Gemma) norms do."""

from __future__ import annotations

import torch
from torch import nn

from openledger.serve.ops import rowwise_cpu
from openledger.serve.ops.cpu_kernels import cpu_float32

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in float32.

    On CPU in float32, where the compiled kernels are built, one kernel call
    (``openledger::rms_norm``, :mod:`~openledger.serve.ops.rowwise_cpu`) does the norm (and
    with :meth:`add_norm`, ``openledger::add_rms_norm``, the residual add before it)
    instead of six small ops; it sums the
    squares in another order than torch, so values may differ in the last bit. Elsewhere
    the torch path is bit for bit transformers' ``LlamaRMSNorm``.

    With ``offset=True`` it is Gemma's norm: the scale is ``1 + weight`` (the checkpoint
    stores the offset from one) and the product is taken in float32 before the cast back,
    bit for bit ``GemmaRMSNorm`` / ``Gemma2RMSNorm`` / ``Gemma3RMSNorm`` on the torch path
    (the float32 kernel, given ``1 + weight``, computes the same product).

    Args:
        size: Feature width.
        eps: Added to the mean square.
        offset: Scale by ``1 + weight`` in float32 (Gemma).

    Attributes:
        use_cpu_kernels: Whether the compiled kernel may run (``EngineConfig.cpu_kernels``).
    """

    use_cpu_kernels = True

    def __init__(self, size: int, eps: float, *, offset: bool = False):
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(
            torch.zeros(size) if offset else torch.ones(size), requires_grad=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x``."""
        if self.use_cpu_kernels and _fits_kernel(x, self.weight):
            return rowwise_cpu.rms_norm(x, self._scale(), self.eps)
        return self._torch(x)

    def _scale(self) -> torch.Tensor:
        """The weight the float32 kernel multiplies by: ``1 + weight`` with an offset."""
        return self.weight + 1.0 if self.offset else self.weight

    def add_norm(self, hidden: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
        """``hidden += delta`` in place (a residual connection; skipped for None), then
        the norm of ``hidden``."""
        if (
            delta is not None
            and self.use_cpu_kernels
            and _fits_kernel(hidden, self.weight)
            and cpu_float32(delta)
        ):
            return rowwise_cpu.add_rms_norm(hidden, delta, self._scale(), self.eps)
        if delta is not None:
            hidden += delta
        normed: torch.Tensor = self(hidden)
        return normed

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        # in place where it cannot change a bit: the same values as
        # weight * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype), fewer temporaries
        scale = x32.pow(2).mean(-1, keepdim=True).add_(self.eps).rsqrt_()
        if self.offset:
            return (x32 * scale * (1.0 + self.weight.float())).to(dtype)
        normed = (x32 * scale).to(dtype)
        if self.weight.dtype == normed.dtype:
            return normed.mul_(self.weight)
        return self.weight * normed


def _fits_kernel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x [T, H]`` and ``weight`` suit the compiled norm (float32 CPU rows, a
    contiguous weight that needs no gradient, the kernels built)."""
    return (
        x.dim() == 2
        and weight.is_contiguous()
        and not weight.requires_grad
        and cpu_float32(x, weight)
    )
