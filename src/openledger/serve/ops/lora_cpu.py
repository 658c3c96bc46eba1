"""The CPU LoRA kernel's layout of a step's tokens and adapters' weights.

At decode, a step has a row or two per adapter: the update is bound by reading the
adapters' weights, and general GEMM routines (``bmm`` included) stream many small
matrices at well under the memory bandwidth. ``openledger::lora_apply``
(:mod:`.lora_cpu_op`, ``csrc/lora.c``) reads each ``A`` and each slice's ``B`` once, front
to back, both threads at a time, with no padding to a common rank and no block-diagonal
zeros for fused projections. Where the kernels cannot be built, :func:`cpu_lora_kernel`
returns None and the torch paths run instead.

This module builds what the op reads: :class:`LoraRows` (a step's token rows by group, one
per step), :class:`LoraCpuTable` (one projection's weights of a step's groups, one per
projection and set of adapters, from each adapter's :class:`KernelEntry`). Weights enter
through :func:`kernel_layout`, which stores each ``B`` transposed (the
:class:`~openledger.serve.ops.lora_torch.LoraSlice` keeps its ``[cols, rank]`` shape as a
view, so the torch paths read the same tensors).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openledger.serve.ops.cpu_kernels import cpu_kernels
from openledger.serve.ops.lora_cpu_op import LORA_APPLY, SliceSpec, check_entry
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
    """The same update in the layout the kernel reads: ``A`` and every slice's ``B^T`` side
    by side in one contiguous buffer (``A`` first, then the slices in order), seen through
    views (``A [rank, H]``; each slice's ``B`` the transpose of its ``[rank, cols]`` rows),
    with no block-diagonal zeros; no copy when ``weights`` is laid out so already."""
    if _buffer_of(weights) is not None:
        return weights
    parts = [weights.a.reshape(-1), *(s.b.T.reshape(-1) for s in weights.slices)]
    buffer = torch.cat(parts)
    a = buffer[: weights.a.numel()].view(weights.a.shape)
    offset, slices = a.numel(), []
    for s in weights.slices:
        cols, rank = s.b.shape
        bt = buffer[offset : offset + rank * cols].view(rank, cols)
        slices.append(LoraSlice(s.rank_start, s.rank_end, s.col_start, s.col_end, bt.T))
        offset += rank * cols
    return LoraWeights(a, tuple(slices), weights.dora)


def _buffer_of(weights: LoraWeights) -> torch.Tensor | None:
    """The one buffer ``weights`` views in :func:`kernel_layout`'s layout, or None."""
    buffer = weights.a._base
    if (
        buffer is None
        or buffer.dim() != 1
        or not buffer.is_contiguous()
        or not weights.a.is_contiguous()
        or weights.a.storage_offset() != buffer.storage_offset()
    ):
        return None
    for s in weights.slices:
        if s.b._base is not buffer or not s.b.T.is_contiguous():
            return None
    return buffer


@dataclass(frozen=True, slots=True)
class KernelEntry:
    """One adapter's weights for one projection in the kernel's layout, checked.

    Attributes:
        buffer: ``A [rank, H]`` then each slice's ``B^T``, contiguous float32.
        rank: ``A``'s rows.
        slices: Each targeted slice's ``(rank_start, rank_end, col_start, col_end, offset
            of its B^T in the buffer)``.
    """

    buffer: torch.Tensor
    rank: int
    slices: tuple[SliceSpec, ...]

    @classmethod
    def of(cls, weights: LoraWeights, in_features: int, out_features: int) -> KernelEntry:
        """``weights`` in :func:`kernel_layout` (copied only when they are not), checked as
        the op checks them (:func:`~openledger.serve.ops.lora_cpu_op.check_entry`).

        Raises:
            ValueError: A weight that is not float32, or does not fit ``H`` and ``O``.
        """
        a = weights.a
        if a.dtype != torch.float32 or a.dim() != 2 or a.shape[1] != in_features:
            raise ValueError(
                f"LoRA A of shape {tuple(a.shape)} and dtype {a.dtype}: the CPU kernel "
                f"needs float32 [rank, {in_features}]"
            )
        laid = kernel_layout(weights)
        buffer = _buffer_of(laid)
        assert buffer is not None  # NOTE: kernel_layout's own layout
        base = int(buffer.storage_offset())
        slices = tuple(
            (s.rank_start, s.rank_end, s.col_start, s.col_end, int(s.b.storage_offset()) - base)
            for s in laid.slices
        )
        check_entry(buffer, a.shape[0], slices, in_features, out_features)
        return cls(buffer, a.shape[0], slices)


class LoraCpuTable:
    """One projection's weights of a step's groups, as the op's ``weights``, ``groups``
    and ``slices``.

    Args:
        entries: Each group's :class:`KernelEntry`, in the step's group order; None where
            the group's adapter does not target this projection (no update for its tokens).
        in_features: ``H``.
        out_features: ``O`` of the (fused) projection.
    """

    def __init__(
        self, entries: Sequence[KernelEntry | None], in_features: int, out_features: int
    ) -> None:
        weights: list[torch.Tensor] = []
        groups: list[list[int]] = []
        slices: list[SliceSpec] = []
        for entry in entries:
            if entry is None:
                groups.append([-1, 0, len(slices), 0])
                continue
            groups.append([len(weights), entry.rank, len(slices), len(entry.slices)])
            weights.append(entry.buffer)
            slices += entry.slices
        self.weights = weights
        self.groups = torch.tensor(groups, dtype=torch.int64).reshape(-1, 4)
        self.slices = torch.tensor(slices, dtype=torch.int64).reshape(-1, 5)
        self.num_groups = len(entries)
        self.in_features = in_features
        self.out_features = out_features
        self.empty = not slices

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
    """The LoRA kernel (``openledger::lora_apply``) for the tables of a backend."""

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
        if not table.empty:
            LORA_APPLY(
                out, x, rows.row_offsets, rows.rows, table.weights, table.groups, table.slices
            )


def cpu_lora_kernel() -> CpuLoraKernel | None:
    """The LoRA kernel, or None where the CPU kernels cannot be had (see
    :func:`~openledger.serve.ops.cpu_kernels.cpu_kernels`)."""
    return None if cpu_kernels() is None else CpuLoraKernel()
