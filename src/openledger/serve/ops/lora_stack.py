"""Dense per-slot weight stacks of one projection, the layout the Triton kernels read.

::

    a     [S, R, H]   slot s holds its A in rows :ranks[s] (the rest is never read)
    b     [S, O, R]   its B (scaling folded in) in columns :ranks[s], zero outside its slices
    ranks [S] int32   0 for an empty slot, or one whose adapter does not target this projection

``R`` is the largest rank installed so far, rounded up to a multiple of 16; installing a
larger one grows the stacks (a copy). Each slot keeps its own rank: the kernels mask the
rows past it, so a small adapter costs no arithmetic for a large one's padding, only memory.
"""

from __future__ import annotations

import torch

from openledger.serve.ops.lora_torch import LoraWeights

__all__ = ["SlotStack"]

_RANK_STEP = 16


class SlotStack:
    """Stacked weights of every slot for one projection, updated one slot at a time.

    Args:
        num_slots: Slots in the pool.
        in_features: ``H``.
        out_features: ``O`` (the fused projection's total width).
        dtype: The served dtype.
        device: Where the stacks live.
    """

    def __init__(
        self,
        num_slots: int,
        in_features: int,
        out_features: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.a = torch.zeros(num_slots, _RANK_STEP, in_features, dtype=dtype, device=device)
        self.b = torch.zeros(num_slots, out_features, _RANK_STEP, dtype=dtype, device=device)
        self.ranks = torch.zeros(num_slots, dtype=torch.int32, device=device)

    @property
    def max_rank(self) -> int:
        """``R``: rank rows held per slot."""
        return int(self.a.shape[1])

    def install(self, slot: int, weights: LoraWeights | None) -> None:
        """Write ``weights`` into ``slot`` (None empties it)."""
        if weights is None:
            self.ranks[slot] = 0
            return
        rank = int(weights.a.shape[0])
        if rank > self.max_rank:
            self._grow(-(-rank // _RANK_STEP) * _RANK_STEP)
        self.a[slot].zero_()
        self.a[slot, :rank] = weights.a
        self.b[slot].zero_()
        for s in weights.slices:
            self.b[slot, s.col_start : s.col_end, s.rank_start : s.rank_end] = s.b
        self.ranks[slot] = rank

    def _grow(self, rank: int) -> None:
        old = self.max_rank
        a = self.a.new_zeros(self.a.shape[0], rank, self.a.shape[2])
        b = self.b.new_zeros(self.b.shape[0], self.b.shape[1], rank)
        a[:, :old] = self.a
        b[:, :, :old] = self.b
        self.a, self.b = a, b
