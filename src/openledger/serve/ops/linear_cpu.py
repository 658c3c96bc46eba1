"""Projections of a step's token rows over a packed weight, as torch ops (``csrc/linear.c``).

* ``openledger::pack_linear(weight)``: ``W [N, K]`` into ``[ceil(N / P), K, P]`` panels of
  ``P`` output columns (the last one padded with zero columns), each read front to back;
* ``openledger::linear(x, packed, out_features, bias)``: ``x W^T + b`` for ``x [M, K]``;
* ``openledger::pack_linear_int8(q)`` and ``openledger::linear_int8(x, packed, scale,
  out_features, bias)``: the same over a weight-only int8 ``Q [N, K]`` with one float32
  scale per output, ``x (Q * scale)^T + b`` (one byte a weight streamed, widened to float32
  in the kernel; :class:`~openledger.serve.layers.quant.QuantizedWeight` uses them);
* ``openledger::pack_linear_int8_bf16(q)`` and ``openledger::linear_int8_bf16(x, packed,
  scale, out_features, bias)``: the same product with bfloat16 dot products (the rows of
  ``x`` rounded to bfloat16, float32 sums) where the CPU has AVX512-BF16
  (:func:`has_bf16_dot`): twice the multiply-adds per instruction of float32.

At decode-sized row counts a projection is bound by streaming its weight; the kernel
reads the panels of a weight in order, several token rows sharing each load
(:class:`~openledger.serve.layers.linear.PackedWeight` chooses when to use it). Each
output is summed by one thread in depth order, so results do not depend on the thread
count.
"""

from __future__ import annotations

import functools

import torch

from openledger.serve.ops.cpu_ops import check_contiguous, check_rows, define, library_or_raise

__all__ = [
    "KERNEL_MAX_ROWS",
    "has_bf16_dot",
    "linear",
    "linear_int8",
    "linear_int8_bf16",
    "pack_linear",
    "pack_linear_int8",
    "pack_linear_int8_bf16",
    "panel_width",
]

KERNEL_MAX_ROWS = 1024
"""Token rows up to which a projection runs through these kernels (float32 and int8
weights); above, the default GEMM over the row-major (or dequantised) weight: the
crossover measured on 2 cores (benchmarks/RESULTS.md, Serving)."""


@functools.cache
def panel_width() -> int:
    """Output columns per panel of a packed weight (``LIN_NR`` of ``csrc/linear.c``)."""
    return int(library_or_raise().packed_linear_size(1, 1))


def _check_pack(weight: torch.Tensor) -> None:
    check_rows("weight", weight)


def _pack_linear(weight: torch.Tensor) -> torch.Tensor:
    _check_pack(weight)
    kernels = library_or_raise()
    outputs, inputs = weight.shape
    width = panel_width()
    packed = torch.empty(-(-outputs // width), inputs, width, dtype=torch.float32)
    kernels.pack_linear(
        weight.data_ptr(), weight.stride(0), outputs, inputs, packed.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return packed


def _check_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
    packed_dtype: torch.dtype = torch.float32,
) -> None:
    check_rows("x", x)
    check_contiguous("packed", packed, packed_dtype)
    width = packed.shape[-1] if packed.dim() == 3 else 0
    if not (
        packed.dim() == 3
        and packed.shape[1] == x.shape[1]
        and out_features > 0
        and (packed.shape[0] - 1) * width < out_features <= packed.shape[0] * width
    ):
        raise ValueError(
            f"packed weight {tuple(packed.shape)} does not hold {out_features} outputs of "
            f"{x.shape[1]} inputs (see openledger::pack_linear)"
        )
    if bias is not None:
        check_contiguous("bias", bias)
        if bias.shape != (out_features,):
            raise ValueError(f"bias {tuple(bias.shape)} for {out_features} outputs")


def _linear(
    x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None
) -> torch.Tensor:
    _check_linear(x, packed, out_features, bias)
    if packed.shape[2] != panel_width():
        raise ValueError(f"packed weight {tuple(packed.shape)}: panels of {panel_width()} expected")
    rows, inputs = x.shape
    out = torch.empty(rows, out_features, dtype=torch.float32)
    library_or_raise().linear(
        x.data_ptr(), x.stride(0), rows, packed.data_ptr(), out_features, inputs,
        None if bias is None else bias.data_ptr(), out.data_ptr(), out_features,
        torch.get_num_threads(),
    )  # fmt: skip
    return out


define(
    "pack_linear(Tensor weight) -> Tensor",
    _pack_linear,
    check=_check_pack,
    out=lambda weight: weight.new_empty(
        -(-weight.shape[0] // panel_width()), weight.shape[1], panel_width()
    ),
)
define(
    "linear(Tensor x, Tensor packed, int out_features, Tensor? bias) -> Tensor",
    _linear,
    check=_check_linear,
    out=lambda x, packed, out_features, bias: x.new_empty(x.shape[0], out_features),
)
_PACK_LINEAR = torch.ops.openledger.pack_linear.default
_LINEAR = torch.ops.openledger.linear.default


def _check_pack_int8(q: torch.Tensor) -> None:
    if not (q.dtype is torch.int8 and q.is_cpu and q.dim() == 2 and q.stride(1) == 1):
        raise ValueError(
            f"q: an int8 CPU tensor [N, K] with unit stride along its rows expected, got "
            f"{q.dtype} {q.device} shape {tuple(q.shape)} strides {q.stride()}"
        )


def _pack_linear_int8(q: torch.Tensor) -> torch.Tensor:
    _check_pack_int8(q)
    outputs, inputs = q.shape
    width = panel_width()
    packed = torch.empty(-(-outputs // width), inputs, width, dtype=torch.int8)
    library_or_raise().pack_linear_int8(
        q.data_ptr(), q.stride(0), outputs, inputs, packed.data_ptr(), torch.get_num_threads()
    )
    return packed


def _check_linear_int8(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
) -> None:
    _check_linear(x, packed, out_features, bias, torch.int8)
    check_contiguous("scale", scale)
    if scale.shape != (out_features,):
        raise ValueError(f"scale {tuple(scale.shape)} for {out_features} outputs")


def _linear_int8(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    _check_linear_int8(x, packed, scale, out_features, bias)
    if packed.shape[2] != panel_width():
        raise ValueError(f"packed weight {tuple(packed.shape)}: panels of {panel_width()} expected")
    rows, inputs = x.shape
    out = torch.empty(rows, out_features, dtype=torch.float32)
    library_or_raise().linear_int8(
        x.data_ptr(), x.stride(0), rows, packed.data_ptr(), scale.data_ptr(), out_features,
        inputs, None if bias is None else bias.data_ptr(), out.data_ptr(), out_features,
        torch.get_num_threads(),
    )  # fmt: skip
    return out


define(
    "pack_linear_int8(Tensor q) -> Tensor",
    _pack_linear_int8,
    check=_check_pack_int8,
    out=lambda q: q.new_empty(-(-q.shape[0] // panel_width()), q.shape[1], panel_width()),
)
define(
    "linear_int8(Tensor x, Tensor packed, Tensor scale, int out_features, Tensor? bias) -> Tensor",
    _linear_int8,
    check=_check_linear_int8,
    out=lambda x, packed, scale, out_features, bias: x.new_empty(x.shape[0], out_features),
)
_PACK_LINEAR_INT8 = torch.ops.openledger.pack_linear_int8.default
_LINEAR_INT8 = torch.ops.openledger.linear_int8.default

_BF16_NR = 32  # NOTE: BF_NR of csrc/linear.c


@functools.cache
def has_bf16_dot() -> bool:
    """Whether the kernels were built with AVX512-BF16 dot products (this CPU has them and
    torch runs its AVX-512 paths)."""
    return bool(library_or_raise().has_bf16_dot())


def _bf16_packed_shape(outputs: int, inputs: int) -> tuple[int, int, int, int]:
    return (-(-outputs // _BF16_NR), -(-inputs // 2), _BF16_NR, 2)


def _pack_linear_int8_bf16(q: torch.Tensor) -> torch.Tensor:
    _check_pack_int8(q)
    outputs, inputs = q.shape
    packed = torch.empty(_bf16_packed_shape(outputs, inputs), dtype=torch.int8)
    library_or_raise().pack_linear_int8_bf16(
        q.data_ptr(), q.stride(0), outputs, inputs, packed.data_ptr(), torch.get_num_threads()
    )
    return packed


def _check_linear_int8_bf16(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
) -> None:
    check_rows("x", x)
    check_contiguous("packed", packed, torch.int8)
    inputs = x.shape[1]
    if not (
        packed.dim() == 4
        and packed.shape[1:] == (-(-inputs // 2), _BF16_NR, 2)
        and out_features > 0
        and (packed.shape[0] - 1) * _BF16_NR < out_features <= packed.shape[0] * _BF16_NR
    ):
        raise ValueError(
            f"packed weight {tuple(packed.shape)} does not hold {out_features} outputs of "
            f"{inputs} inputs (see openledger::pack_linear_int8_bf16)"
        )
    check_contiguous("scale", scale)
    if scale.shape != (out_features,):
        raise ValueError(f"scale {tuple(scale.shape)} for {out_features} outputs")
    if bias is not None:
        check_contiguous("bias", bias)
        if bias.shape != (out_features,):
            raise ValueError(f"bias {tuple(bias.shape)} for {out_features} outputs")


def _linear_int8_bf16(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    _check_linear_int8_bf16(x, packed, scale, out_features, bias)
    rows, inputs = x.shape
    out = torch.empty(rows, out_features, dtype=torch.float32)
    scratch = torch.empty(rows, -(-inputs // 2), dtype=torch.int32)
    status = library_or_raise().linear_int8_bf16(
        x.data_ptr(), x.stride(0), rows, packed.data_ptr(), scale.data_ptr(), out_features,
        inputs, None if bias is None else bias.data_ptr(), out.data_ptr(), out_features,
        scratch.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError("the CPU kernels were built without AVX512-BF16 dot products")
    return out


define(
    "pack_linear_int8_bf16(Tensor q) -> Tensor",
    _pack_linear_int8_bf16,
    check=_check_pack_int8,
    out=lambda q: q.new_empty(_bf16_packed_shape(*q.shape)),
)
define(
    "linear_int8_bf16(Tensor x, Tensor packed, Tensor scale, int out_features, Tensor? bias)"
    " -> Tensor",
    _linear_int8_bf16,
    check=_check_linear_int8_bf16,
    out=lambda x, packed, scale, out_features, bias: x.new_empty(x.shape[0], out_features),
)
_PACK_LINEAR_INT8_BF16 = torch.ops.openledger.pack_linear_int8_bf16.default
_LINEAR_INT8_BF16 = torch.ops.openledger.linear_int8_bf16.default


def pack_linear(weight: torch.Tensor) -> torch.Tensor:
    """``openledger::pack_linear``: ``weight [N, K]`` (float32 CPU, unit stride along
    ``K``) in the panels :func:`linear` reads.

    Raises:
        ValueError: Another dtype, device or layout.
        RuntimeError: The kernels are not built here.
    """
    packed: torch.Tensor = _PACK_LINEAR(weight)
    return packed


def linear(
    x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """``openledger::linear``: ``x W^T (+ bias)`` for ``x [M, K]`` (float32 CPU rows) over
    ``W [out_features, K]`` packed by :func:`pack_linear`.

    Raises:
        ValueError: Tensors that do not fit each other or the kernel.
        RuntimeError: The kernels are not built here.
    """
    out: torch.Tensor = _LINEAR(x, packed, out_features, bias)
    return out


def pack_linear_int8(q: torch.Tensor) -> torch.Tensor:
    """``openledger::pack_linear_int8``: ``q [N, K]`` (int8 CPU, unit stride along ``K``)
    in the panels :func:`linear_int8` reads.

    Raises:
        ValueError: Another dtype, device or layout.
        RuntimeError: The kernels are not built here.
    """
    packed: torch.Tensor = _PACK_LINEAR_INT8(q)
    return packed


def linear_int8(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``openledger::linear_int8``: ``x (Q * scale[:, None])^T (+ bias)`` for ``x [M, K]``
    (float32 CPU rows) over ``Q [out_features, K]`` packed by :func:`pack_linear_int8`,
    ``scale [out_features]`` float32.

    Raises:
        ValueError: Tensors that do not fit each other or the kernel.
        RuntimeError: The kernels are not built here.
    """
    out: torch.Tensor = _LINEAR_INT8(x, packed, scale, out_features, bias)
    return out


def pack_linear_int8_bf16(q: torch.Tensor) -> torch.Tensor:
    """``openledger::pack_linear_int8_bf16``: ``q [N, K]`` (int8 CPU, unit stride along
    ``K``) in the depth-paired panels :func:`linear_int8_bf16` reads.

    Raises:
        ValueError: Another dtype, device or layout.
        RuntimeError: The kernels are not built here.
    """
    packed: torch.Tensor = _PACK_LINEAR_INT8_BF16(q)
    return packed


def linear_int8_bf16(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``openledger::linear_int8_bf16``: ``bf16(x) (Q * scale[:, None])^T (+ bias)`` with
    float32 sums, over ``Q`` packed by :func:`pack_linear_int8_bf16`.

    Raises:
        ValueError: Tensors that do not fit each other or the kernel.
        RuntimeError: The kernels are not built here, or without AVX512-BF16
            (:func:`has_bf16_dot`).
    """
    out: torch.Tensor = _LINEAR_INT8_BF16(x, packed, scale, out_features, bias)
    return out
