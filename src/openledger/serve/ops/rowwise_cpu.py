"""Row-wise kernels of a decoder layer as torch ops (``csrc/rowwise.c``).

* ``openledger::rms_norm(x, weight, eps)`` and ``openledger::add_rms_norm(hidden, delta,
  weight, eps)`` (``hidden += delta`` in place, then the norm): one pass each instead of
  six small torch ops (:class:`~openledger.serve.layers.norm.RMSNorm`);
* ``openledger::silu_mul(gate_up)``: ``silu(gate) * up`` of the fused gate|up projection,
  with a vectorised exp (:class:`~openledger.serve.models.decoder.GatedMLP`);
* ``openledger::rotary(heads, cos_sin, positions)``: the half-split rotary embedding of a
  step's query and key heads (:class:`~openledger.serve.layers.rotary.RotaryEmbedding`);
* ``openledger::argmax_rows(x)``: the greedy pick over a step's logits (:func:`argmax_rows`).

They sum in other orders than torch and may fuse multiply-adds: values may differ from
the torch forms in the last bits (each is tested against them).
"""

from __future__ import annotations

import torch

from openledger.serve.ops.cpu_kernels import cpu_float32
from openledger.serve.ops.cpu_ops import (
    check_contiguous,
    check_rows,
    define,
    library_or_raise,
)

__all__ = ["add_rms_norm", "argmax_rows", "rms_norm", "rotary", "silu_mul"]


def _check_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor) -> None:
    check_rows("x", x)
    check_contiguous("weight", weight)
    if weight.dim() != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit rows of {x.shape[1]}")
    if delta is not None:
        check_rows("delta", delta)
        if delta.shape != x.shape:
            raise ValueError(f"residual {tuple(delta.shape)} does not match {tuple(x.shape)}")


def _norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    rows, width = x.shape
    out = torch.empty(rows, width, dtype=torch.float32)
    library_or_raise().add_rms_norm(
        x.data_ptr(), x.stride(0), None if delta is None else delta.data_ptr(),
        0 if delta is None else delta.stride(0), weight.data_ptr(), eps, rows, width,
        out.data_ptr(), width, torch.get_num_threads(),
    )  # fmt: skip
    return out


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _check_norm(x, None, weight)
    return _norm(x, None, weight, eps)


def _add_rms_norm(
    hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    _check_norm(hidden, delta, weight)
    return _norm(hidden, delta, weight, eps)


def _check_silu_mul(gate_up: torch.Tensor) -> None:
    check_rows("gate_up", gate_up)
    if gate_up.shape[1] % 2:
        raise ValueError(f"gate_up has {gate_up.shape[1]} columns: gate and up need an even count")


def _silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    _check_silu_mul(gate_up)
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(rows, width, dtype=torch.float32)
    library_or_raise().silu_mul(
        gate_up.data_ptr(), gate_up.stride(0), rows, width, out.data_ptr(), torch.get_num_threads()
    )
    return out


def _check_rotary(heads: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> None:
    check_rows("heads", heads, dim=3)
    if heads.stride(1) != heads.shape[2] or heads.shape[2] % 2:
        raise ValueError(
            f"heads {tuple(heads.shape)} strides {heads.stride()}: each row's heads must be "
            "contiguous, of an even width"
        )
    check_contiguous("cos_sin", cos_sin)
    if cos_sin.dim() != 3 or cos_sin.shape[0] != 2 or cos_sin.shape[2] != heads.shape[2]:
        raise ValueError(f"cos_sin {tuple(cos_sin.shape)} is not [2, positions, {heads.shape[2]}]")
    check_contiguous("positions", positions, torch.int64)
    if positions.shape != (heads.shape[0],):
        raise ValueError(f"{tuple(positions.shape)} positions for {heads.shape[0]} rows of heads")


def _rotary(heads: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    _check_rotary(heads, cos_sin, positions)
    rows, count, dim = heads.shape
    out = torch.empty(rows, count, dim, dtype=torch.float32)
    status = library_or_raise().rotary(
        heads.data_ptr(), heads.stride(0), rows, count, dim, cos_sin.data_ptr(),
        cos_sin.shape[1], positions.data_ptr(), out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise ValueError(
            f"positions must be in 0..{cos_sin.shape[1] - 1} (max_positions of this "
            f"rotary table), got {int(positions.min())}..{int(positions.max())}"
        )
    return out


def _check_argmax(x: torch.Tensor) -> None:
    check_rows("x", x)
    if x.shape[1] == 0:
        raise ValueError("argmax_rows of rows without columns")


def _argmax_rows(x: torch.Tensor) -> torch.Tensor:
    _check_argmax(x)
    out = torch.empty(x.shape[0], dtype=torch.int64)
    library_or_raise().argmax_rows(
        x.data_ptr(), x.stride(0), x.shape[0], x.shape[1], out.data_ptr(), torch.get_num_threads()
    )
    return out


define(
    "rms_norm(Tensor x, Tensor weight, float eps) -> Tensor",
    _rms_norm,
    check=lambda x, weight, eps: _check_norm(x, None, weight),
    out=lambda x, weight, eps: x.new_empty(x.shape),
)
define(
    "add_rms_norm(Tensor(a!) hidden, Tensor delta, Tensor weight, float eps) -> Tensor",
    _add_rms_norm,
    check=lambda hidden, delta, weight, eps: _check_norm(hidden, delta, weight),
    out=lambda hidden, delta, weight, eps: hidden.new_empty(hidden.shape),
)
define(
    "silu_mul(Tensor gate_up) -> Tensor",
    _silu_mul,
    check=_check_silu_mul,
    out=lambda gate_up: gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2),
)
define(
    "rotary(Tensor heads, Tensor cos_sin, Tensor positions) -> Tensor",
    _rotary,
    check=_check_rotary,
    out=lambda heads, cos_sin, positions: heads.new_empty(heads.shape),
)
define(
    "argmax_rows(Tensor x) -> Tensor",
    _argmax_rows,
    check=_check_argmax,
    out=lambda x: x.new_empty(x.shape[0], dtype=torch.int64),
)
_RMS_NORM = torch.ops.openledger.rms_norm.default
_ADD_RMS_NORM = torch.ops.openledger.add_rms_norm.default
_SILU_MUL = torch.ops.openledger.silu_mul.default
_ROTARY = torch.ops.openledger.rotary.default
_ARGMAX_ROWS = torch.ops.openledger.argmax_rows.default


def argmax_rows(x: torch.Tensor, *, use_kernel: bool = True) -> list[int]:
    """The index of each row's largest value of ``x [rows, cols]`` (the first among equals,
    a row's first NaN if it has one), as ``x.argmax(dim=-1).tolist()`` gives: through
    ``openledger::argmax_rows`` for float32 CPU rows unless ``use_kernel`` is False, else torch.
    """
    if not use_kernel or x.dim() != 2 or x.shape[1] == 0 or not cpu_float32(x):
        found: list[int] = x.argmax(dim=-1).tolist()
        return found
    picked: list[int] = _ARGMAX_ROWS(x).tolist()
    return picked


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``openledger::rms_norm``: ``weight * x / sqrt(mean(x^2) + eps)`` of each row of
    ``x [T, H]`` (float32 CPU rows; ``weight`` contiguous ``[H]``).

    Raises:
        ValueError: Tensors that do not fit each other or the kernel.
    """
    out: torch.Tensor = _RMS_NORM(x, weight, eps)
    return out


def add_rms_norm(
    hidden: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """``openledger::add_rms_norm``: ``hidden += delta`` in place, then :func:`rms_norm` of
    ``hidden``.

    Raises:
        ValueError: Tensors that do not fit each other or the kernel.
    """
    out: torch.Tensor = _ADD_RMS_NORM(hidden, delta, weight, eps)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``openledger::silu_mul``: ``silu(gate) * up`` for the halves of each row of
    ``gate_up [T, 2W]`` (float32 CPU rows), a new ``[T, W]``.

    Raises:
        ValueError: Another dtype, device or layout, or an odd width.
    """
    out: torch.Tensor = _SILU_MUL(gate_up)
    return out


def rotary(heads: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``openledger::rotary``: ``heads [T, n, D]`` (float32, each row's heads contiguous)
    rotated at ``positions [T]`` (int64) by ``cos_sin [2, P, D]`` (cosines, then sines, each
    half a copy of the other), a new contiguous ``[T, n, D]``.

    Raises:
        ValueError: Tensors that do not fit each other, or a position outside ``0..P-1``.
    """
    out: torch.Tensor = _ROTARY(heads, cos_sin, positions)
    return out
