"""The CPU/torch LoRA path: tokens grouped by adapter, two small matmuls per group.

One adapter's update of one (possibly fused) projection is a :class:`LoraWeights`: the
``lora_A`` of every targeted slice stacked along the rank (one shrink matmul for q, k and
v together), and per slice its ``lora_B`` with the scaling folded in, written into that
slice's output columns::

    x [T, H] --A (r_q+r_k+r_v, H)--> h [T, r_q+r_k+r_v]
    h[:, rank range of q] --B_q--> out[:, q columns]   (and k, v likewise)

Each adapter keeps its own rank (no padding to the largest), a slice it does not target
simply has no entry, and a weighted combination is the concatenation of its members
(:func:`combine_lora_weights`). The grouping of tokens (:class:`LoraGroups`) is computed
once per step and reused by every layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from openledger.serve.ops.lora_dora import DoraFactors

__all__ = [
    "LoraGroups",
    "LoraSlice",
    "LoraWeights",
    "add_lora",
    "combine_lora_weights",
    "fuse_expand",
    "stack_lora_weights",
]


@dataclass(frozen=True, slots=True)
class LoraSlice:
    """Where one targeted slice reads its rank rows and writes its output columns.

    Attributes:
        rank_start: First row of :attr:`LoraWeights.a` belonging to this slice.
        rank_end: One past its last row.
        col_start: First output column of the fused projection it updates.
        col_end: One past its last column.
        b: ``[col_end - col_start, rank_end - rank_start]`` ``lora_B`` times the scaling.
    """

    rank_start: int
    rank_end: int
    col_start: int
    col_end: int
    b: torch.Tensor


@dataclass(frozen=True, slots=True)
class LoraWeights:
    """One adapter's low-rank update of one projection.

    Attributes:
        a: ``[sum of slice ranks, H]`` stacked ``lora_A`` weights.
        slices: The targeted slices, in any order.
        dora: A DoRA adapter's output factors (its ``B`` then holds ``g s B``; see
            :mod:`.lora_dora`); None for plain LoRA.
    """

    a: torch.Tensor
    slices: tuple[LoraSlice, ...]
    dora: DoraFactors | None = None

    @property
    def num_bytes(self) -> int:
        """Bytes held by the tensors."""
        tensors = [self.a, *(s.b for s in self.slices)]
        extra = 0 if self.dora is None else self.dora.num_bytes
        return sum(t.numel() * t.element_size() for t in tensors) + extra

    def to(self, device: torch.device, dtype: torch.dtype) -> LoraWeights:
        """A copy on ``device`` in ``dtype`` (no copy when already there)."""
        slices = tuple(
            LoraSlice(s.rank_start, s.rank_end, s.col_start, s.col_end, s.b.to(device, dtype))
            for s in self.slices
        )
        dora = None if self.dora is None else self.dora.to(device, dtype)
        return LoraWeights(self.a.to(device, dtype), slices, dora)


def combine_lora_weights(parts: Sequence[tuple[LoraWeights, float]]) -> LoraWeights:
    """The exact weighted sum ``sum_i w_i * B_i A_i`` as one update of summed rank.

    A's are concatenated along the rank and each member's B is scaled by its weight, the
    way PEFT's ``add_weighted_adapter(combination_type="cat")`` builds its adapter.

    Args:
        parts: ``(weights, coefficient)`` pairs; at least one.

    Returns:
        The combined update.
    """
    if not parts:
        raise ValueError("combine_lora_weights needs at least one adapter")
    if any(weights.dora is not None for weights, _ in parts):
        raise ValueError("a DoRA update is not linear in its weights: it cannot be combined")
    a_parts: list[torch.Tensor] = []
    slices: list[LoraSlice] = []
    offset = 0
    for weights, coefficient in parts:
        a_parts.append(weights.a)
        for s in weights.slices:
            start, end = s.rank_start + offset, s.rank_end + offset
            slices.append(LoraSlice(start, end, s.col_start, s.col_end, s.b * coefficient))
        offset += weights.a.shape[0]
    return LoraWeights(torch.cat(a_parts, dim=0), tuple(slices))


def fuse_expand(weights: LoraWeights) -> LoraWeights:
    """The same update with every slice's B in one block-diagonal matrix.

    One expand matmul (and one write) per token group instead of one per slice, at the
    price of the zero blocks: worth it on CPU, where each small op costs more than its
    arithmetic.
    """
    if len(weights.slices) < 2:
        return weights
    first = min(s.col_start for s in weights.slices)
    last = max(s.col_end for s in weights.slices)
    b = weights.a.new_zeros(last - first, weights.a.shape[0])
    for s in weights.slices:
        b[s.col_start - first : s.col_end - first, s.rank_start : s.rank_end] += s.b
    return LoraWeights(weights.a, (LoraSlice(0, weights.a.shape[0], first, last, b),), weights.dora)


@dataclass(frozen=True, slots=True)
class LoraGroups:
    """The step's tokens grouped by adapter slot (tokens with -1 are left out).

    Attributes:
        groups: ``(slot, rows)`` pairs; ``rows`` is a ``slice`` when the slot's tokens are
            contiguous (prefill of one sequence, or a sorted batch), else an index tensor.
    """

    groups: tuple[tuple[int, slice | torch.Tensor], ...]

    @classmethod
    def from_runs(
        cls, runs: Mapping[int, Sequence[tuple[int, int]]], device: torch.device
    ) -> LoraGroups:
        """Groups from each slot's ``(start, end)`` token runs (see
        :class:`~openledger.serve.ops.lora_step.LoraStep`, which builds them once a step)."""
        return cls(tuple((slot, _ranges_rows(spans, device)) for slot, spans in runs.items()))

    @property
    def empty(self) -> bool:
        """Whether no token has an adapter."""
        return not self.groups


def _ranges_rows(spans: Sequence[tuple[int, int]], device: torch.device) -> slice | torch.Tensor:
    merged = [list(spans[0])]
    for begin, end in spans[1:]:
        if begin == merged[-1][1]:
            merged[-1][1] = end
        else:
            merged.append([begin, end])
    if len(merged) == 1:
        return slice(merged[0][0], merged[0][1])
    rows = [index for begin, end in merged for index in range(begin, end)]
    return torch.tensor(rows, dtype=torch.int64, device=device)


def add_lora(
    out: torch.Tensor,
    x: torch.Tensor,
    groups: LoraGroups,
    slots: Sequence[LoraWeights | None],
) -> None:
    """Add every token's adapter update to ``out`` in place.

    Args:
        out: ``[T, O]`` base projection output.
        x: ``[T, H]`` the projection's input.
        groups: Tokens grouped by slot.
        slots: Weights of each slot for this projection; None where the slot's adapter
            does not target it.
    """
    for slot, rows in groups.groups:
        weights = slots[slot]
        if weights is None:
            continue
        h = x[rows] @ weights.a.T
        for s in weights.slices:
            delta = h[:, s.rank_start : s.rank_end] @ s.b.T
            if isinstance(rows, slice):
                out[rows, s.col_start : s.col_end] += delta
            else:
                out[:, s.col_start : s.col_end].index_add_(0, rows, delta)


def stack_lora_weights(
    slots: Sequence[LoraWeights | None], in_features: int, out_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense stacked form ``A [S, R, H]``, ``B [S, O, R]`` of per-slot weights.

    ``R`` is the largest slot's rank; smaller ranks and untargeted slices are zero-padded,
    so the reference einsums (and the Triton kernels) give the same update as
    :func:`add_lora`.

    Args:
        slots: Weights per slot, None for an empty slot.
        in_features: ``H``.
        out_features: ``O``, the fused projection's total width.

    Returns:
        ``(a_stack, b_stack)`` in float32 on the CPU.
    """
    rank = max([w.a.shape[0] for w in slots if w is not None] + [1])
    a_stack = torch.zeros(len(slots), rank, in_features)
    b_stack = torch.zeros(len(slots), out_features, rank)
    for index, weights in enumerate(slots):
        if weights is None:
            continue
        a_stack[index, : weights.a.shape[0]] = weights.a.float().cpu()
        for s in weights.slices:
            block = b_stack[index, s.col_start : s.col_end, s.rank_start : s.rank_end]
            block += s.b.float().cpu()
    return a_stack, b_stack
