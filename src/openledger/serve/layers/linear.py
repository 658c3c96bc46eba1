"""Linear projections whose weight is made of named slices (q|k|v, gate|up)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "OutputHook", "PackedWeight"]

_HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(  # type: ignore[no-untyped-call]
    torch.ops.mkldnn, "_linear_pointwise"
)
PACKING_ENV = "OPENLEDGER_ONEDNN"
"""Set to ``0`` to keep every CPU projection on the default GEMM (no packed copies)."""


class PackedWeight:
    """A CPU fp32 weight ``[out, in]`` in oneDNN's blocked layout, packed on first use.

    NOTE: at the token counts of decode steps (a few to a few hundred rows), oneDNN's
    kernel over a pre-packed weight streams the weight faster than the default GEMM over
    the row-major one (benchmarks/RESULTS.md, Serving). It costs a second copy of the
    weight. Packed lazily, again when the weight's storage or version changes (call
    :meth:`invalidate` after writing through ``.data``); on GPU, other dtypes, without
    oneDNN or with ``OPENLEDGER_ONEDNN=0`` (read when packing) it is unused.
    """

    __slots__ = ("_key", "_packed")

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._packed: torch.Tensor | None = None

    def invalidate(self) -> None:
        """Forget the packed copy; the next :meth:`linear` packs again."""
        self._key = None
        self._packed = None

    def linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``x W^T + b``, through the packed weight where it applies."""
        packed = self._get(weight) if x.dim() == 2 and x.dtype == torch.float32 else None
        if packed is None:
            return F.linear(x, weight, bias)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return out

    def _get(self, weight: torch.Tensor) -> torch.Tensor | None:
        key = (weight.data_ptr(), weight._version)
        if self._key != key:
            self._key = key
            self._packed = None
            if (
                _HAS_ONEDNN
                and weight.device.type == "cpu"
                and weight.dtype == torch.float32
                and os.environ.get(PACKING_ENV, "1") != "0"
            ):
                try:
                    self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
                except (RuntimeError, AttributeError):  # pragma: no cover - no oneDNN
                    self._packed = None
        return self._packed


class OutputHook(Protocol):
    """Adds a per-token correction to a projection's output (multi-adapter serving)."""

    def apply(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """Update ``out [T, sum(output_sizes)]`` in place from the input ``x [T, input_size]``."""


class Linear(nn.Module):
    """``y = x W^T + b`` where ``W`` stacks ``output_sizes`` slices along the output dim.

    A fused projection (q, k and v; gate and up) is one matmul over one weight, loaded
    slice by slice from the checkpoint's separate tensors.

    NOTE: multi-adapter serving hooks in here: ``lora`` (None by default) gets the base
    output and the input after the matmul; a LoRA update applies per slice
    (``output_sizes``) and per token (``BatchMetadata.adapter_indices``).

    Args:
        input_size: Input features.
        output_sizes: Output features of each slice.
        bias: Whether the projection has a bias.
    """

    def __init__(self, input_size: int, output_sizes: Sequence[int], *, bias: bool = False):
        super().__init__()
        self.input_size = input_size
        self.output_sizes = tuple(output_sizes)
        self.offsets = [sum(self.output_sizes[:i]) for i in range(len(self.output_sizes) + 1)]
        total = self.offsets[-1]
        self.weight = nn.Parameter(torch.empty(total, input_size), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(total), requires_grad=False) if bias else None
        self.lora: OutputHook | None = None
        self.packed = PackedWeight()

    def load_slice(self, param_name: str, tensor: torch.Tensor, index: int = 0) -> None:
        """Copy a checkpoint tensor into slice ``index`` of ``weight`` or ``bias``.

        Raises:
            ValueError: The tensor's shape does not fit the slice.
        """
        param = self.weight if param_name == "weight" else self.bias
        if param is None:
            raise ValueError(f"this projection has no {param_name}")
        target = param.data[self.offsets[index] : self.offsets[index + 1]]
        if target.shape != tensor.shape:
            raise ValueError(
                f"{param_name} slice {index}: expected {tuple(target.shape)}, "
                f"got {tuple(tensor.shape)}"
            )
        target.copy_(tensor)
        self.packed.invalidate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``[T, input_size]`` to ``[T, sum(output_sizes)]``."""
        out = self.packed.linear(x, self.weight, self.bias)
        if self.lora is not None:
            self.lora.apply(out, x)
        return out
