"""The batched torch LoRA path: every adapter of a step in one ``bmm`` per op.

The step's tokens with an adapter form ``G`` groups (one per adapter); each group is
padded to the longest, ``M`` rows, and each adapter's weights to the step's largest rank
``R`` for this projection (zeros), so that::

    x_g [G, M, H] --bmm A_t [G, H, R]--> h [G, M, R] --bmm B_t [G, R, O]--> delta [G, M, O]

Three ops per projection whatever the number of adapters, and no arithmetic for other
adapters' ranks. When the groups are equal and contiguous (sorted decode steps, prompts
of one length), ``x_g`` is a view of ``x`` and the write a view of ``out``; otherwise
rows are gathered, padding rows zeroed, and the result added back with ``index_add_``.

The weights are stacked once per set of adapters (:class:`BatchedWeights`) and reused by
every step that has the same adapters, and the token plan (:class:`BatchedPlan`) once per
step and reused by every projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openledger.serve.ops.lora_torch import LoraWeights

__all__ = ["BatchedPlan", "BatchedWeights", "add_lora_batched", "stack_group_weights"]


@dataclass(frozen=True, slots=True)
class BatchedPlan:
    """Where each group's tokens are: a contiguous block, or gathered rows.

    Attributes:
        num_groups: ``G``.
        rows_per_group: ``M``.
        block: ``(start, end)`` when group ``g`` is rows ``start + g*M : start + (g+1)*M``.
        gather: ``[G*M]`` int64 row of each padded position (0 for padding); None with a block.
        pad_mask: ``[G, M, 1]`` 1 for real rows, 0 for padding; None when nothing is padded.
    """

    num_groups: int
    rows_per_group: int
    block: tuple[int, int] | None
    gather: torch.Tensor | None
    pad_mask: torch.Tensor | None

    @classmethod
    def from_runs(
        cls, runs: Sequence[Sequence[tuple[int, int]]], device: torch.device
    ) -> BatchedPlan:
        """Plan from each group's ``(start, end)`` row runs (group order = weight order)."""
        lengths = [sum(end - start for start, end in group) for group in runs]
        width = max(lengths)
        starts = [group[0][0] for group in runs]
        contiguous = all(len(group) == 1 for group in runs) and all(n == width for n in lengths)
        if contiguous and all(s == starts[0] + g * width for g, s in enumerate(starts)):
            return cls(len(runs), width, (starts[0], starts[0] + len(runs) * width), None, None)
        gather: list[int] = []
        mask: list[float] = []
        for group, length in zip(runs, lengths, strict=True):
            gather.extend(row for start, end in group for row in range(start, end))
            gather.extend([0] * (width - length))
            mask.extend([1.0] * length + [0.0] * (width - length))
        padded = any(n != width for n in lengths)
        return cls(
            len(runs),
            width,
            None,
            torch.tensor(gather, dtype=torch.int64).to(device, non_blocking=True),
            torch.tensor(mask).view(len(runs), width, 1).to(device) if padded else None,
        )


@dataclass(frozen=True, slots=True)
class BatchedWeights:
    """One projection's weights of a step's adapters, stacked and rank-padded.

    Attributes:
        a_t: ``[G, H, R]`` each adapter's A, transposed; zero past its rank.
        b_t: ``[G, R, O]`` its B (scaling folded in) transposed; zero outside its slices.
    """

    a_t: torch.Tensor
    b_t: torch.Tensor


def stack_group_weights(
    weights: Sequence[LoraWeights | None], in_features: int, out_features: int
) -> BatchedWeights | None:
    """Stack ``weights[g]`` (None: the group's adapter does not target this projection).

    Returns:
        The stacks, or None when no group has weights here.
    """
    present = [w for w in weights if w is not None]
    if not present:
        return None
    rank = max(w.a.shape[0] for w in present)
    like = present[0].a
    a_t = like.new_zeros(len(weights), in_features, rank)
    b_t = like.new_zeros(len(weights), rank, out_features)
    for group, w in enumerate(weights):
        if w is None:
            continue
        a_t[group, :, : w.a.shape[0]] = w.a.T
        for s in w.slices:
            b_t[group, s.rank_start : s.rank_end, s.col_start : s.col_end] = s.b.T
    return BatchedWeights(a_t, b_t)


def add_lora_batched(
    out: torch.Tensor, x: torch.Tensor, plan: BatchedPlan, weights: BatchedWeights
) -> None:
    """Add every token's adapter update to ``out [T, O]`` in place (see the module doc)."""
    groups, rows = plan.num_groups, plan.rows_per_group
    if plan.block is not None:
        start, end = plan.block
        h = torch.bmm(x[start:end].view(groups, rows, -1), weights.a_t)
        out[start:end] += torch.bmm(h, weights.b_t).view(end - start, -1)
        return
    assert plan.gather is not None  # NOTE: a plan has a block or a gather
    h = torch.bmm(x.index_select(0, plan.gather).view(groups, rows, -1), weights.a_t)
    if plan.pad_mask is not None:
        h.mul_(plan.pad_mask)
    out.index_add_(0, plan.gather, torch.bmm(h, weights.b_t).view(groups * rows, -1))
