"""Quantised base weights: int8 (weight-only) and FP8 (E4M3), one scale per output channel.

``EngineConfig(quantization="int8" | "fp8")`` quantises every projection of the base model
and its LM head once, at load (:func:`quantize_model`); the embeddings, norms and the KV
cache keep the model's dtype, and LoRA updates are added to the projection's output in
the activation dtype, as without quantisation.

A weight ``W [N, K]`` becomes ``Q [N, K]`` and ``scale [N]`` with ``W ~ Q * scale[:, None]``:

* ``int8``: ``scale = max|W[n]| / 127``, ``Q = round(W / scale)`` in ``[-127, 127]``
  (symmetric). On CPU with float32 activations the compiled kernel
  (``openledger::linear_int8``, :mod:`~openledger.serve.ops.linear_cpu`) streams the int8
  panels and widens them to float32 in registers: a decode step reads a quarter of the
  fp32 bytes. With ``EngineConfig(quantized_compute="bfloat16")`` on a CPU with
  AVX512-BF16, the kernel (``openledger::linear_int8_bf16``) rounds the activations to
  bfloat16 instead and multiplies with bfloat16 dot products (float32 sums): twice the
  multiply-adds per instruction, which is what bounds a projection of a few dozen rows on
  a CPU with few cores; the int8 weights widen to bfloat16 exactly, so the only extra
  error is the activations' rounding (``2^-9`` of each). Steps of one or two rows, bound
  by the weight stream rather than the multiplies, compute in float32 over the same
  panels. Elsewhere (no C compiler, CUDA, other dtypes, prompts longer than
  :data:`~openledger.serve.ops.linear_cpu.KERNEL_MAX_ROWS` rows, autograd) the weight is
  dequantised for the call. Once packed, only the kernel's panels are kept.
* ``fp8``: ``scale = max|W[n]| / 448``, ``Q = W / scale`` rounded to ``float8_e4m3fn``. On
  CUDA devices of compute capability 8.9 and up with bfloat16 activations, each call
  quantises the activations per token and runs ``torch._scaled_mm`` with row-wise scales
  (W8A8); elsewhere the weight is dequantised for the call (weight-only).

Results equal the dequantised weight's (``x (Q * scale)^T``) up to the summation order,
except the bfloat16 compute and the FP8 ``_scaled_mm`` paths, whose activations are
rounded to bfloat16 and FP8 respectively.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from openledger.serve.ops import linear_cpu
from openledger.serve.ops.cpu_kernels import cpu_kernels

__all__ = ["QUANTIZATIONS", "Compute", "Quantization", "QuantizedWeight", "quantize_model"]

Quantization = Literal["int8", "fp8"]
QUANTIZATIONS: tuple[Quantization, ...] = ("int8", "fp8")
"""The schemes :class:`QuantizedWeight` knows."""
Compute = Literal["float32", "bfloat16"]
"""The arithmetic of int8 projections on CPU (``EngineConfig.quantized_compute``)."""

_INT8_MAX = 127.0
_FP8 = torch.float8_e4m3fn
_FP8_MAX = float(torch.finfo(_FP8).max)  # 448


class QuantizedWeight:
    """A projection weight ``[N, K]`` stored as ``int8`` or ``float8_e4m3fn`` with one
    float32 scale per output row.

    Args:
        weight: The weight to quantise (any float dtype, any device; it is not kept).
        scheme: ``"int8"`` or ``"fp8"``.
        compute: The arithmetic of the int8 CPU kernel: ``"float32"``, or ``"bfloat16"``
            dot products where the CPU has AVX512-BF16 (float32 elsewhere).

    Raises:
        ValueError: An unknown scheme, or a weight that is not 2-D floating point or holds
            non-finite values.
    """

    __slots__ = ("_data", "_packed", "_shape", "compute", "dtype", "scale", "scheme")

    def __init__(
        self, weight: torch.Tensor, scheme: Quantization, *, compute: Compute = "float32"
    ) -> None:
        if scheme not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {scheme!r}")
        if compute not in ("float32", "bfloat16"):
            raise ValueError(f"quantized_compute must be float32 or bfloat16, got {compute!r}")
        if weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(
                f"a 2-D floating-point weight is quantised, got {weight.dtype} "
                f"shape {tuple(weight.shape)}"
            )
        # NOTE: block by block of rows (a row's scale is its own), so the float32
        # temporaries stay a few MiB even for an LM head
        limit = _INT8_MAX if scheme == "int8" else _FP8_MAX
        kind = torch.int8 if scheme == "int8" else _FP8
        data = torch.empty(weight.shape, dtype=kind, device=weight.device)
        scales = []
        start = 0
        for block in _row_blocks(weight):
            w = block.detach().float()  # NOTE: no copy when float32 already
            if not bool(torch.isfinite(w).all()):
                raise ValueError("the weight holds inf or NaN values: it cannot be quantised")
            scale = w.abs().amax(dim=1) / limit
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # NOTE: zero rows
            scaled = w / scale[:, None]
            rows = slice(start, start + block.shape[0])
            if scheme == "int8":
                data[rows] = scaled.round_().clamp_(-_INT8_MAX, _INT8_MAX).to(kind)
            else:
                data[rows] = scaled.clamp_(-_FP8_MAX, _FP8_MAX).to(kind)
            scales.append(scale)
            start = rows.stop
        scale = torch.cat(scales)
        self._data: torch.Tensor | None = data
        self._shape = data.shape
        self.scale = scale.contiguous()
        self.scheme: Quantization = scheme
        self.dtype = weight.dtype
        """The activation dtype the weight was loaded in (what dequantising returns)."""
        self.compute: Compute = compute
        self._packed: torch.Tensor | None = None

    @property
    def data(self) -> torch.Tensor:
        """The quantised weight ``Q [N, K]`` (``int8`` or ``float8_e4m3fn``).

        NOTE: once the CPU kernel has packed it, only the packed copy is kept (one byte a
        weight in all); this unpacks it again.
        """
        if self._data is not None:
            return self._data
        assert self._packed is not None
        n, k = self._shape
        if self._packed.dim() == 4:  # bfloat16 kernel's [P, ceil(K / 2), 32, 2]
            p, k2, width, _ = self._packed.shape
            rows = self._packed.permute(0, 2, 1, 3).reshape(p * width, 2 * k2)
        else:  # [P, K, 24]
            p, _, width = self._packed.shape
            rows = self._packed.permute(0, 2, 1).reshape(p * width, k)
        return rows[:n, :k].contiguous()

    @property
    def shape(self) -> torch.Size:
        """``(N, K)``."""
        return self._shape

    @property
    def nbytes(self) -> int:
        """Bytes held: the quantised weight (or the kernel's packed copy of it, which
        replaces it once made) and its scales."""
        held = self._data if self._data is not None else self._packed
        assert held is not None
        return held.nbytes + self.scale.nbytes

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``Q * scale[:, None]`` in ``dtype`` (default the activation dtype): the weight
        this projection computes with."""
        w = self.data.float() * self.scale[:, None]
        return w.to(dtype or self.dtype)

    def linear(
        self, x: torch.Tensor, bias: torch.Tensor | None, *, use_kernel: bool = True
    ) -> torch.Tensor:
        """``x (Q * scale)^T + bias`` for ``x [..., K]``; the compiled int8 kernel where
        it applies and ``use_kernel`` allows it (``EngineConfig.cpu_kernels``)."""
        grad = torch.is_grad_enabled() and x.requires_grad
        if (
            self.scheme == "int8"
            and use_kernel
            and not grad
            and x.dim() == 2
            and 0 < x.shape[0] <= linear_cpu.KERNEL_MAX_ROWS
            and x.shape[1] == self._shape[1]
            and x.dtype is torch.float32
            and x.is_cpu
            and x.stride(1) == 1
            and self.scale.is_cpu
            and (bias is None or (bias.dtype is torch.float32 and bias.is_contiguous()))
        ):
            packed, bf16 = self._kernel_panels()
            if packed is not None:
                n = self._shape[0]
                if bf16:
                    return linear_cpu.linear_int8_bf16(x, packed, self.scale, n, bias)
                return linear_cpu.linear_int8(x, packed, self.scale, n, bias)
        if self.scheme == "fp8" and not grad and _scaled_mm_fits(x, self.data):
            return _fp8_scaled_mm(x, self.data, self.scale, bias)
        # NOTE: a packed weight is unpacked for this call (no compiler here any more, the
        # kernels turned off, or a prompt longer than the kernel's rows)
        return F.linear(x, self.dequantize(x.dtype), bias)

    @property
    def uses_bf16_dot(self) -> bool:
        """Whether the CPU kernel multiplies in bfloat16 here (``compute="bfloat16"`` and
        the kernels built with AVX512-BF16)."""
        kernels = cpu_kernels() is not None
        return self.compute == "bfloat16" and kernels and linear_cpu.has_bf16_dot()

    def _kernel_panels(self) -> tuple[torch.Tensor | None, bool]:
        """The kernel's packed copy (made on first use, replacing the row-major weight),
        and whether it is the bfloat16 kernel's; None where the kernels are not built."""
        if self._packed is None:
            if cpu_kernels() is None:
                return None, False
            bf16 = self.uses_bf16_dot
            pack = linear_cpu.pack_linear_int8_bf16 if bf16 else linear_cpu.pack_linear_int8
            self._packed = pack(self.data.contiguous())
            self._data = None
        return self._packed, self._packed.dim() == 4  # NOTE: the bfloat16 kernel's layout

    def __repr__(self) -> str:
        n, k = self._shape
        return f"QuantizedWeight({self.scheme}, [{n}, {k}], {self.dtype})"


_BLOCK_ELEMENTS = 1 << 20
"""Weights quantised per block of rows of about this many elements (4 MiB in float32)."""


def _row_blocks(weight: torch.Tensor) -> list[torch.Tensor]:
    """``weight [N, K]`` as views of consecutive rows, about :data:`_BLOCK_ELEMENTS` each."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, weight.shape[1]))
    return list(torch.split(weight, rows, dim=0))


def _scaled_mm_fits(x: torch.Tensor, q: torch.Tensor) -> bool:
    """Whether ``torch._scaled_mm`` with row-wise scales takes these operands here: CUDA
    of compute capability >= 8.9, bfloat16 rows, both sizes multiples of 16."""
    if not (x.is_cuda and q.is_cuda and x.dtype is torch.bfloat16 and x.dim() == 2):
        return False
    if torch.cuda.get_device_capability(x.device) < (8, 9):
        return False
    n, k = q.shape
    return k % 16 == 0 and n % 16 == 0 and x.shape[1] == k


def _fp8_scaled_mm(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """W8A8 FP8: the rows of ``x`` quantised per token, one ``_scaled_mm`` with row-wise
    scales (activations ``[M, 1]``, weights ``[1, N]``), bfloat16 out."""
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp_(min=1e-12)
    x_scale = amax / _FP8_MAX
    xq = (x.float() / x_scale).clamp_(-_FP8_MAX, _FP8_MAX).to(_FP8)
    out: torch.Tensor = torch._scaled_mm(
        xq, q.t(), scale_a=x_scale, scale_b=scale[None, :], bias=bias, out_dtype=x.dtype
    )
    return out


def quantize_model(model: nn.Module, scheme: Quantization, *, compute: Compute = "float32") -> int:
    """Quantise every projection of ``model`` (its :class:`~openledger.serve.layers.linear.
    Linear` modules) and its LM head in place, int8 ones computing in ``compute`` on CPU;
    returns the bytes the base weights take now (quantised weights, scales, packed copies
    made so far).

    Raises:
        ValueError: An unknown scheme, or a weight that cannot be quantised.
    """
    from openledger.serve.layers.linear import Linear

    if scheme not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {scheme!r}")
    total = 0
    for module in model.modules():
        if isinstance(module, Linear):
            module.quantize(scheme, compute=compute)
            assert module.packed.quantized is not None
            total += module.packed.quantized.nbytes
    quantize_head = getattr(model, "quantize_head", None)  # the served decoder's LM head
    if quantize_head is not None:
        total += int(quantize_head(scheme, compute=compute))
    return total
