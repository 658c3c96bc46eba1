"""The compiled CPU kernel for the LoRA updates of a step's tokens, grouped by adapter.

At decode, a step has a row or two per adapter: the update is bound by reading the
adapters' weights, and general GEMM routines (``bmm`` included) stream many small
matrices at well under the memory bandwidth. ``openledger_lora_apply``
(:mod:`.cpu_kernels`) reads each ``A`` and each slice's ``B`` once, front to back, both
threads at a time, with no padding to a common rank and no block-diagonal zeros for fused
projections (benchmarks/RESULTS.md, Multi-adapter serving). Where the kernels cannot be
built, :func:`cpu_lora_kernel` returns None and the torch paths run instead.

Layout the kernel reads (:class:`LoraCpuTable`, one per projection and set of adapters;
:class:`LoraRows`, one per step)::

    groups  [G, 4] int64   address of A_g [rank_g, H], rank_g, first slice, slice count
    slices  [S, 5] int64   rank_start, rank_end, col_start, col_end, address of B^T
                           [rank_end - rank_start, col_end - col_start] (scaling folded in)
    row_offsets [G + 1], rows [N] int64: group g's token rows are
                           rows[row_offsets[g]:row_offsets[g + 1]]

Weights enter through :func:`kernel_layout`, which stores each ``B`` transposed (the
:class:`~openledger.serve.ops.lora_torch.LoraSlice` keeps its ``[cols, rank]`` shape as a
view, so the torch paths read the same tensors).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openledger.serve.ops.cpu_kernels import CpuKernels, cpu_kernels
from openledger.serve.ops.lora_torch import LoraSlice, LoraWeights

__all__ = [
    "CpuLoraKernel",
    "KernelEntry",
    "LoraCpuTable",
    "LoraRows",
    "cpu_lora_kernel",
    "kernel_layout",
]


@dataclass(frozen=True, slots=True)
class LoraRows:
    """A step's token rows grouped by adapter, in the order of the step's groups.

    Attributes:
        row_offsets: ``[G + 1]`` int64; group ``g``'s rows are
            ``rows[row_offsets[g]:row_offsets[g + 1]]``.
        rows: ``[N]`` int64 token rows.
        max_rows: The largest group's row count.
        row_end: One past the largest row (the step must have at least that many tokens).
        num_groups: ``G``.
    """

    row_offsets: torch.Tensor
    rows: torch.Tensor
    max_rows: int
    row_end: int
    num_groups: int

    @classmethod
    def from_runs(cls, runs: Sequence[Sequence[tuple[int, int]]]) -> LoraRows:
        """Rows from each group's ``(start, end)`` runs of token rows.

        Raises:
            ValueError: An empty or reversed run, or a row in two runs (the kernel's
                threads would write it at once).
        """
        offsets = [0]
        rows: list[int] = []
        for group in runs:
            for start, end in group:
                if not 0 <= start < end:
                    raise ValueError(f"row run ({start}, {end}) is empty or negative")
                rows.extend(range(start, end))
            offsets.append(len(rows))
        if len(set(rows)) != len(rows):
            raise ValueError("a token row appears in more than one run")
        sizes = [b - a for a, b in itertools.pairwise(offsets)]
        return cls(
            torch.tensor(offsets, dtype=torch.int64),
            torch.tensor(rows, dtype=torch.int64),
            max(sizes, default=0),
            max(rows, default=-1) + 1,
            len(offsets) - 1,
        )


def kernel_layout(weights: LoraWeights) -> LoraWeights:
    """The same update in the layout the kernel reads: ``A`` contiguous, each slice's
    ``B`` a transposed view of a contiguous ``[rank, cols]`` tensor (no copy when it is
    already), no block-diagonal zeros."""
    slices = tuple(
        LoraSlice(s.rank_start, s.rank_end, s.col_start, s.col_end, _transposed_storage(s.b))
        for s in weights.slices
    )
    return LoraWeights(weights.a.contiguous(), slices)


def _transposed_storage(b: torch.Tensor) -> torch.Tensor:
    return b if b.T.is_contiguous() else b.T.contiguous().T


@dataclass(frozen=True, slots=True)
class KernelEntry:
    """One adapter's weights for one projection, checked and addressed for the kernel.

    Attributes:
        a_ptr: Address of ``A [rank, H]`` (contiguous float32).
        rank: Its rows.
        slices: Five int64 per targeted slice: rank start/end, column start/end, address of
            the slice's contiguous ``B^T``.
        keep: The tensors those addresses point into (held while the entry lives).
    """

    a_ptr: int
    rank: int
    slices: tuple[int, ...]
    keep: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, weights: LoraWeights, in_features: int, out_features: int) -> KernelEntry:
        """Check ``weights`` against the projection's shape and record their addresses
        (copying only what is not already in :func:`kernel_layout`).

        Raises:
            ValueError: A weight that is not float32, or does not fit ``H`` and ``O``.
        """
        a = weights.a.contiguous()
        if a.dtype != torch.float32 or a.dim() != 2 or a.shape[1] != in_features:
            raise ValueError(
                f"LoRA A of shape {tuple(a.shape)} and dtype {a.dtype}: the CPU kernel "
                f"needs float32 [rank, {in_features}]"
            )
        keep = [a]
        slices: list[int] = []
        for s in weights.slices:
            if not (0 <= s.rank_start < s.rank_end <= a.shape[0]) or not (
                0 <= s.col_start < s.col_end <= out_features
            ):
                raise ValueError(
                    f"LoRA slice rank {s.rank_start}:{s.rank_end} cols {s.col_start}:"
                    f"{s.col_end} does not fit rank {a.shape[0]} and {out_features} outputs"
                )
            bt = s.b.T.contiguous()
            if bt.dtype != torch.float32 or tuple(bt.shape) != (
                s.rank_end - s.rank_start,
                s.col_end - s.col_start,
            ):
                raise ValueError(
                    f"LoRA B of shape {tuple(s.b.shape)} and dtype {bt.dtype} does not fit "
                    f"its slice ({s.col_end - s.col_start} cols, rank "
                    f"{s.rank_end - s.rank_start}, float32)"
                )
            keep.append(bt)
            slices += [s.rank_start, s.rank_end, s.col_start, s.col_end, bt.data_ptr()]
        return cls(a.data_ptr(), int(a.shape[0]), tuple(slices), tuple(keep))


class LoraCpuTable:
    """One projection's weights of a step's groups, as the kernel's address tables.

    Args:
        entries: Each group's :class:`KernelEntry`, in the step's group order; None where
            the group's adapter does not target this projection (no update for its tokens).
        in_features: ``H``.
        out_features: ``O`` of the (fused) projection.
    """

    def __init__(
        self, entries: Sequence[KernelEntry | None], in_features: int, out_features: int
    ) -> None:
        groups: list[int] = []
        slices: list[int] = []
        for entry in entries:
            if entry is None:
                groups += [0, 0, len(slices) // 5, 0]
                continue
            groups += [entry.a_ptr, entry.rank, len(slices) // 5, len(entry.slices) // 5]
            slices += entry.slices
        self.groups = torch.tensor(groups, dtype=torch.int64)
        self.slices = torch.tensor(slices or [0], dtype=torch.int64)
        self.num_groups = len(entries)
        self.in_features = in_features
        self.out_features = out_features
        self.empty = not slices
        self._entries = tuple(entries)  # NOTE: keeps every addressed tensor alive

    @classmethod
    def from_weights(
        cls, weights: Sequence[LoraWeights | None], in_features: int, out_features: int
    ) -> LoraCpuTable:
        """The table of ``weights`` (None: the group's adapter does not target this one).

        Raises:
            ValueError: See :meth:`KernelEntry.of`.
        """
        entries = [
            None if w is None else KernelEntry.of(w, in_features, out_features) for w in weights
        ]
        return cls(entries, in_features, out_features)


class CpuLoraKernel:
    """The LoRA kernel of a compiled :class:`~openledger.serve.ops.cpu_kernels.CpuKernels`.

    Args:
        kernels: The loaded library.
    """

    def __init__(self, kernels: CpuKernels) -> None:
        self.path = kernels.path
        self._fn = kernels.lora_apply

    def apply(
        self, out: torch.Tensor, x: torch.Tensor, rows: LoraRows, table: LoraCpuTable
    ) -> None:
        """Add every grouped token's update to ``out [T, O]`` in place.

        Args:
            out: float32 CPU ``[T, O]``, unit stride along ``O``.
            x: float32 CPU ``[T, H]``, unit stride along ``H``.
            rows: The step's grouping (``G`` groups, rows below ``T``).
            table: This projection's weights for the same ``G`` groups.

        Raises:
            ValueError: Tensors of the wrong dtype, device, shape or strides.
            MemoryError: The kernel could not allocate its scratch.
        """
        # NOTE: one expression on the hot path (a few hundred calls per step); the
        # detailed checks and messages only when it fails
        f32 = torch.float32
        if not (
            out.dtype is f32
            and x.dtype is f32
            and out.is_cpu
            and x.is_cpu
            and out.dim() == 2
            and x.dim() == 2
            and out.stride(1) == 1
            and x.stride(1) == 1
            and x.shape[1] == table.in_features
            and out.shape[1] == table.out_features
            and x.shape[0] == out.shape[0] >= rows.row_end
            and rows.num_groups == table.num_groups
        ):
            _check(out, x, rows, table)  # NOTE: raises the precise error
            raise ValueError("the inputs do not fit the CPU LoRA kernel")
        if table.empty:
            return
        status = self._fn(
            x.data_ptr(),
            x.stride(0),
            out.data_ptr(),
            out.stride(0),
            table.in_features,
            table.num_groups,
            rows.row_offsets.data_ptr(),
            rows.rows.data_ptr(),
            table.groups.data_ptr(),
            table.slices.data_ptr(),
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("the CPU LoRA kernel could not allocate its scratch")


def _check(out: torch.Tensor, x: torch.Tensor, rows: LoraRows, table: LoraCpuTable) -> None:
    for name, t in (("out", out), ("x", x)):
        if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != 2 or t.stride(1) != 1:
            raise ValueError(
                f"{name}: the CPU LoRA kernel needs a float32 CPU matrix with unit stride "
                f"along its rows, got {t.dtype} {t.device} shape {tuple(t.shape)} "
                f"strides {t.stride()}"
            )
    if x.shape[1] != table.in_features or out.shape[1] != table.out_features:
        raise ValueError(
            f"x {tuple(x.shape)} / out {tuple(out.shape)} do not fit a table for "
            f"{table.in_features} -> {table.out_features} features"
        )
    if x.shape[0] != out.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows and out {out.shape[0]}")
    if rows.num_groups != table.num_groups:
        raise ValueError(f"{rows.num_groups} row groups for a table of {table.num_groups}")
    if rows.row_end > x.shape[0]:
        raise ValueError(f"a grouped row is past the step's {x.shape[0]} tokens")


def cpu_lora_kernel() -> CpuLoraKernel | None:
    """The LoRA kernel, or None where the CPU kernels cannot be had (see
    :func:`~openledger.serve.ops.cpu_kernels.cpu_kernels`)."""
    kernels = cpu_kernels()
    return None if kernels is None else CpuLoraKernel(kernels)
