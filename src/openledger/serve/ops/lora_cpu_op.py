"""The CPU LoRA kernel as a torch op: ``openledger::lora_apply`` (``csrc/lora.c``)::

    lora_apply(Tensor(a!) out, Tensor x, Tensor row_offsets, Tensor rows, Tensor[] weights,
               Tensor groups, Tensor slices) -> ()

adds ``(x[t] A_g^T) B_g^T`` to ``out[t]`` for every token row ``t`` of group ``g``: group
``g``'s rows are ``rows[row_offsets[g]:row_offsets[g + 1]]``; ``weights`` holds one
contiguous float32 buffer per adapter (``A_g [rank, H]`` first, then each slice's ``B^T``);
``groups [G, 4]`` int64 the index of group ``g``'s buffer (-1: no update), its rank, its
first slice and its slice count, the groups' slices in order; ``slices [S, 5]`` int64 each
slice's rank range, column range and the offset of its ``B^T [rank range, column range]``
in its group's buffer (scaling folded in). The layout is built by
:class:`~openledger.serve.ops.lora_cpu.LoraCpuTable` and
:class:`~openledger.serve.ops.lora_cpu.LoraRows`.

The addresses the C code follows are made here, once per ``groups`` tensor and set of
buffers, after each buffer is checked against the layout (:func:`check_entry`); the
kernel checks the rows on every call before it writes (in order, inside the step, each
in one group).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openledger.serve.ops.cpu_ops import (
    CheckedOnce,
    check_contiguous,
    check_rows,
    define,
    library_or_raise,
)

__all__ = ["LORA_APPLY", "SliceSpec", "check_entry"]

SliceSpec = tuple[int, int, int, int, int]
"""``(rank_start, rank_end, col_start, col_end, offset of B^T in the buffer)``."""

F32 = torch.float32
I64 = torch.int64


def check_entry(
    buffer: torch.Tensor,
    rank: int,
    slices: Sequence[SliceSpec],
    in_features: int,
    out_features: int,
) -> None:
    """The op's check of one adapter's buffer for one projection: contiguous float32 CPU,
    ``A [rank, H]`` at its start, each slice inside the rank, the projection's ``O``
    columns and the buffer, after ``A``.

    Raises:
        ValueError: Naming what does not fit.
    """
    check_contiguous("LoRA weights", buffer)
    size, a_end = buffer.numel(), rank * in_features
    if buffer.dim() != 1 or not 0 < a_end <= size:
        raise ValueError(
            f"a LoRA buffer of shape {tuple(buffer.shape)} does not start with A "
            f"[{rank}, {in_features}]"
        )
    for rank_start, rank_end, col_start, col_end, offset in slices:
        if not (0 <= rank_start < rank_end <= rank) or not (
            0 <= col_start < col_end <= out_features
        ):
            raise ValueError(
                f"LoRA slice rank {rank_start}:{rank_end} cols {col_start}:{col_end} does not "
                f"fit rank {rank} and {out_features} outputs"
            )
        if not a_end <= offset <= size - (rank_end - rank_start) * (col_end - col_start):
            raise ValueError(
                f"LoRA B^T of slice {rank_start}:{rank_end} at {offset} does not fit a buffer "
                f"of {size} floats after A [{rank}, {in_features}]"
            )


@dataclass(frozen=True, slots=True)
class _Addressed:
    """A table checked against its buffers, with the addresses the C code follows."""

    weights: tuple[torch.Tensor, ...]
    slices: torch.Tensor
    shape: tuple[int, int]
    group_table: torch.Tensor
    slice_table: torch.Tensor


# NOTE: the op runs a few hundred times a step: a table's addresses, which do not change
# between its calls, are checked once per table and remembered.
_TABLES: CheckedOnce[_Addressed] = CheckedOnce()


def _check_apply(
    out: torch.Tensor,
    x: torch.Tensor,
    row_offsets: torch.Tensor,
    rows: torch.Tensor,
    groups: torch.Tensor,
    slices: torch.Tensor,
) -> None:
    """Every check of the op's tensors that their values do not enter (the fake op's)."""
    check_rows("out", out)
    check_rows("x", x)
    if x.shape[0] != out.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows and out {out.shape[0]}")
    _check_rows_layout(row_offsets, rows)
    _check_table_layout(groups, slices)
    if row_offsets.shape[0] != groups.shape[0] + 1:
        raise ValueError(f"{row_offsets.shape[0] - 1} row groups for a table of {groups.shape[0]}")


def _check_rows_layout(row_offsets: torch.Tensor, rows: torch.Tensor) -> None:
    check_contiguous("row_offsets", row_offsets, I64)
    check_contiguous("rows", rows, I64)
    if row_offsets.dim() != 1 or rows.dim() != 1 or row_offsets.shape[0] < 1:
        raise ValueError("row_offsets [G + 1] and rows [N] expected")


def _check_table_layout(groups: torch.Tensor, slices: torch.Tensor) -> None:
    for name, t, width in (("groups", groups, 4), ("slices", slices, 5)):
        check_contiguous(name, t, I64)
        if t.dim() != 2 or t.shape[1] != width:
            raise ValueError(f"{name} {tuple(t.shape)}: [count, {width}] expected")


def _addressed(
    weights: list[torch.Tensor], groups: torch.Tensor, slices: torch.Tensor, shape: tuple[int, int]
) -> _Addressed:
    """The table's addresses, checked (once per ``groups`` tensor and set of buffers)."""
    found = _TABLES.get(groups)
    if (
        found is not None
        and found.slices is slices
        and found.shape == shape
        and len(found.weights) == len(weights)
        and all(map(operator.is_, found.weights, weights))
    ):
        return found
    _check_table_layout(groups, slices)
    slice_rows: list[SliceSpec] = [tuple(row) for row in slices.tolist()]
    group_table: list[list[int]] = []
    slice_table: list[list[int]] = []
    for index, rank, first, count in groups.tolist():
        if first != len(slice_table) or first + count > len(slice_rows) or count < 0:
            raise ValueError("the groups' slices must follow each other in order")
        if index < 0:
            group_table.append([0, 0, first, 0])
            continue
        if index >= len(weights):
            raise ValueError(f"LoRA buffer {index} named; the op was given {len(weights)}")
        buffer, specs = weights[index], slice_rows[first : first + count]
        check_entry(buffer, rank, specs, *shape)
        group_table.append([buffer.data_ptr(), rank, first, count])
        slice_table += [[*spec[:4], buffer.data_ptr() + 4 * spec[4]] for spec in specs]
    if len(slice_table) != len(slice_rows):
        raise ValueError("slices that no group names")
    found = _Addressed(
        tuple(weights),
        slices,
        shape,
        torch.tensor(group_table, dtype=I64).reshape(-1, 4),
        torch.tensor(slice_table or [[0] * 5], dtype=I64),
    )
    _TABLES.put(groups, found)
    return found


def _lora_apply(
    out: torch.Tensor,
    x: torch.Tensor,
    row_offsets: torch.Tensor,
    rows: torch.Tensor,
    weights: list[torch.Tensor],
    groups: torch.Tensor,
    slices: torch.Tensor,
) -> None:
    if not (
        out.dtype is F32
        and x.dtype is F32
        and out.is_cpu
        and x.is_cpu
        and out.dim() == 2
        and x.dim() == 2
        and out.stride(1) == 1
        and x.stride(1) == 1
        and x.shape[0] == out.shape[0]
        and row_offsets.shape[0] == groups.shape[0] + 1
    ):
        _check_apply(out, x, row_offsets, rows, groups, slices)  # NOTE: raises the precise error
    table = _addressed(weights, groups, slices, (x.shape[1], out.shape[1]))
    status = library_or_raise().lora_apply(
        x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), x.shape[1], groups.shape[0],
        row_offsets.data_ptr(), rows.data_ptr(), rows.shape[0], x.shape[0],
        table.group_table.data_ptr(), table.slice_table.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    if status == -2:
        raise ValueError(
            f"the row groups must split the rows in order, each row one of the step's "
            f"{x.shape[0]} tokens and in one group only"
        )
    if status != 0:
        raise MemoryError("the CPU LoRA kernel could not allocate its scratch")


define(
    "lora_apply(Tensor(a!) out, Tensor x, Tensor row_offsets, Tensor rows, Tensor[] weights, "
    "Tensor groups, Tensor slices) -> ()",
    _lora_apply,
    check=lambda out, x, row_offsets, rows, weights, groups, slices: _check_apply(
        out, x, row_offsets, rows, groups, slices
    ),
    out=lambda *_: None,
)
LORA_APPLY = torch.ops.openledger.lora_apply.default
"""``openledger::lora_apply`` (see the module docstring): ``out [T, O]`` and ``x [T, H]``
float32 CPU with unit stride along their rows. Raises ValueError for tensors of the wrong
dtype, device, shape or strides or a layout that does not fit its weights, MemoryError
when the kernel cannot allocate its scratch."""
