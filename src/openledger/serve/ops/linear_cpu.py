"""Projections of a step's token rows over a packed weight, as torch ops (``csrc/linear.c``).

* ``openledger::pack_linear(weight)``: ``W [N, K]`` into ``[ceil(N / P), K, P]`` panels of
  ``P`` output columns (the last one padded with zero columns), each read front to back;
* ``openledger::linear(x, packed, out_features, bias)``: ``x W^T + b`` for ``x [M, K]``.

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

__all__ = ["linear", "pack_linear", "panel_width"]


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
    x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None
) -> None:
    check_rows("x", x)
    check_contiguous("packed", packed)
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
