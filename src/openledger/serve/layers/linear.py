"""Linear projections whose weight is made of named slices (q|k|v, gate|up)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from openledger.serve.layers.quant import Compute, Quantization, QuantizedWeight
from openledger.serve.ops import linear_cpu
from openledger.serve.ops.cpu_kernels import cpu_kernels
from openledger.serve.ops.linear_cpu import KERNEL_MAX_ROWS

__all__ = ["KERNEL_MAX_ROWS", "Linear", "OutputHook", "PackedWeight"]

_HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(  # type: ignore[no-untyped-call]
    torch.ops.mkldnn, "_linear_pointwise"
)

_Packing = Literal["kernel", "onednn"]


class PackedWeight:
    """A CPU fp32 weight ``[out, in]`` in a blocked layout for decode-sized matmuls.

    NOTE: at the token counts of decode steps (a few to a few dozen rows) a projection is
    bound by streaming its weight, and the default GEMM over the row-major weight streams
    it well below the memory bandwidth. Where the compiled CPU kernels are built, the
    weight is packed into the panels that ``openledger::linear``
    (:mod:`~openledger.serve.ops.linear_cpu`) reads, which runs up to
    :data:`KERNEL_MAX_ROWS` rows (longer prompts take the default GEMM); else into oneDNN's
    layout, for every row count (how each compares: benchmarks/RESULTS.md, Serving). Either
    costs a second copy of the weight. Packed lazily, again when the weight's storage or
    version changes (call :meth:`invalidate` after writing through ``.data``); on GPU,
    other dtypes, while autograd records, with neither packing at hand or when turned off
    (:meth:`configure`; ``EngineConfig.weight_packing``) it is unused.

    A quantised weight (:meth:`quantize`, ``EngineConfig.quantization``) replaces both:
    :meth:`linear` then computes with the :class:`~openledger.serve.layers.quant.
    QuantizedWeight` and ignores the weight it is passed.
    """

    __slots__ = ("_key", "_kind", "_packed", "packing", "quantized", "use_kernel")

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._packed: torch.Tensor | None = None
        self._kind: _Packing = "onednn"
        self.packing = True
        self.use_kernel = True
        self.quantized: QuantizedWeight | None = None

    def quantize(
        self, weight: torch.Tensor, scheme: Quantization, *, compute: Compute = "float32"
    ) -> None:
        """Compute with ``weight`` quantised (``"int8"`` or ``"fp8"``; int8 on CPU in
        ``compute`` arithmetic) from now on; the caller may free ``weight``.

        Raises:
            ValueError: An unknown scheme or a weight that cannot be quantised.
        """
        self.quantized = QuantizedWeight(weight, scheme, compute=compute)
        self.invalidate()

    def configure(self, *, packing: bool, use_kernel: bool) -> None:
        """Pack at all (``packing``), and into the compiled kernel's panels where it is built
        (``use_kernel``; else oneDNN's layout); the next :meth:`linear` packs again."""
        self.packing, self.use_kernel = packing, use_kernel
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the packed copy; the next :meth:`linear` packs again."""
        self._key = None
        self._packed = None

    def linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``x W^T + b``, through the packed or quantised weight where it applies."""
        if self.quantized is not None:
            return self.quantized.linear(x, bias, use_kernel=self.use_kernel)
        packed = self._get(weight) if x.dim() == 2 and x.dtype == torch.float32 else None
        if packed is None or (
            torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        ):
            return F.linear(x, weight, bias)
        if self._kind == "onednn":
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
            return out
        rows, (outputs, inputs) = x.shape[0], weight.shape
        if not (
            0 < rows <= KERNEL_MAX_ROWS
            and x.shape[1] == inputs
            and x.is_cpu
            and x.stride(1) == 1
            and (
                bias is None
                or (
                    bias.shape == (outputs,)
                    and bias.dtype == torch.float32
                    and bias.is_cpu
                    and bias.is_contiguous()
                )
            )
        ):
            return F.linear(x, weight, bias)  # NOTE: also what reports a shape mismatch
        return linear_cpu.linear(x, packed, outputs, bias)

    def _get(self, weight: torch.Tensor) -> torch.Tensor | None:
        key = (weight.data_ptr(), weight._version)
        if self._key != key:
            self._key = key
            self._packed = None
            if (
                self.packing
                and weight.device.type == "cpu"
                and weight.dtype == torch.float32
                and weight.dim() == 2
            ):
                self._packed, self._kind = _pack(weight.detach(), self.use_kernel)
        return self._packed


def _pack(weight: torch.Tensor, use_kernel: bool) -> tuple[torch.Tensor | None, _Packing]:
    if use_kernel and cpu_kernels() is not None:
        if weight.stride(1) != 1:
            weight = weight.contiguous()
        return linear_cpu.pack_linear(weight), "kernel"
    if not _HAS_ONEDNN:
        return None, "onednn"
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, None), "onednn"
    except (RuntimeError, AttributeError):  # pragma: no cover - no oneDNN
        return None, "onednn"


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
    (``output_sizes``) and per token (the step's adapters, in the LoRA state).

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

    def quantize(self, scheme: Quantization, *, compute: Compute = "float32") -> None:
        """Quantise the weight (``"int8"`` or ``"fp8"``, int8 computing in ``compute`` on
        CPU; see :mod:`~openledger.serve.layers.quant`) and free the full-precision one:
        ``weight`` becomes an empty ``[0, input_size]`` tensor and :meth:`base_weight`
        dequantises.

        Raises:
            ValueError: An unknown scheme, a weight that cannot be quantised, or one
                already quantised.
        """
        if self.packed.quantized is not None:
            raise ValueError("this projection is already quantised")
        self.packed.quantize(self.weight.data, scheme, compute=compute)
        self.weight = nn.Parameter(
            self.weight.data.new_empty(0, self.input_size), requires_grad=False
        )

    def base_weight(self) -> torch.Tensor:
        """The weight ``[sum(output_sizes), input_size]`` the projection computes with
        (dequantised when quantised)."""
        quantized = self.packed.quantized
        return self.weight if quantized is None else quantized.dequantize()

    def load_slice(self, param_name: str, tensor: torch.Tensor, index: int = 0) -> None:
        """Copy a checkpoint tensor into slice ``index`` of ``weight`` or ``bias``.

        Raises:
            ValueError: The tensor's shape does not fit the slice, or the weight is
                quantised already (load first, then quantise).
        """
        if param_name == "weight" and self.packed.quantized is not None:
            raise ValueError("the weight is quantised: slices are loaded before quantising")
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
