"""Linear projections whose weight is made of named slices (q|k|v, gate|up)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "OutputHook"]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``[T, input_size]`` to ``[T, sum(output_sizes)]``."""
        out = F.linear(x, self.weight, self.bias)
        if self.lora is not None:
            self.lora.apply(out, x)
        return out
