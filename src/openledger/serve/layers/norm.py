"""RMSNorm, computed in float32 the way transformers' Llama does."""

from __future__ import annotations

import torch
from torch import nn

from openledger.serve.ops.cpu_kernels import cpu_float32, cpu_kernels

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in float32.

    On CPU in float32, where the compiled kernels are built
    (:mod:`~openledger.serve.ops.cpu_kernels`), one kernel call does the norm (and with
    :meth:`add_norm` the residual add before it) instead of six small ops; it sums the
    squares in another order than torch, so values may differ in the last bit. Elsewhere
    the torch path is bit for bit transformers' ``LlamaRMSNorm``.

    Args:
        size: Feature width.
        eps: Added to the mean square.

    Attributes:
        use_cpu_kernels: Whether the compiled kernel may run (``EngineConfig.cpu_kernels``).
    """

    use_cpu_kernels = True

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x``."""
        if self.use_cpu_kernels and _fits_kernel(x, self.weight):
            return self._kernel(x, None)
        return self._torch(x)

    def add_norm(self, hidden: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
        """``hidden += delta`` in place (a residual connection; skipped for None), then
        the norm of ``hidden``."""
        if (
            delta is not None
            and self.use_cpu_kernels
            and _fits_kernel(hidden, self.weight)
            and cpu_float32(delta)
        ):
            return self._kernel(hidden, delta)
        if delta is not None:
            hidden += delta
        normed: torch.Tensor = self(hidden)
        return normed

    def _kernel(self, x: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
        kernels = cpu_kernels()
        assert kernels is not None  # NOTE: checked by _fits_kernel
        rows, width = x.shape
        if delta is not None and delta.shape != x.shape:
            raise ValueError(f"residual {tuple(delta.shape)} does not match {tuple(x.shape)}")
        out = torch.empty(rows, width, dtype=torch.float32)
        kernels.add_rms_norm(
            x.data_ptr(),
            x.stride(0),
            None if delta is None else delta.data_ptr(),
            0 if delta is None else delta.stride(0),
            self.weight.data_ptr(),
            self.eps,
            rows,
            width,
            out.data_ptr(),
            width,
            torch.get_num_threads(),
        )
        return out

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        # in place where it cannot change a bit: the same values as
        # weight * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype), fewer temporaries
        scale = x32.pow(2).mean(-1, keepdim=True).add_(self.eps).rsqrt_()
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
