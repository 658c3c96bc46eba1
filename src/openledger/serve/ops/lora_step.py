"""``LoraStep``: the one encoding of which tokens of a step use which adapter slot.

A step's tokens are laid out sequence after sequence. Built once per step from host lists
(no device synchronisation), it keeps the step as *segments*: maximal runs of consecutive
tokens of one slot, in token order (tokens without an adapter, slot -1, left out). Every
form a LoRA backend reads is derived from the segments, once, when first asked for::

    segments  [(slot, start, end), ...]     (token order)
      -> runs       per slot, in order of first appearance: [(start, end), ...]
          -> groups  (torch, per adapter)   -> plan  (torch, batched bmm)
          -> rows    (the CPU kernel)
      -> lora_segments (Triton SGMV)          token_slots (Triton BGMV)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from openledger.serve.ops.lora_batched import BatchedPlan
from openledger.serve.ops.lora_cpu import LoraRows
from openledger.serve.ops.lora_torch import LoraGroups

if TYPE_CHECKING:
    from openledger.serve.ops.lora_triton import LoraSegments

__all__ = ["LoraStep"]

Segment = tuple[int, int, int]


class LoraStep:
    """A step's tokens grouped by adapter slot (see the module docstring).

    Args:
        segments: ``(slot, start, end)`` runs in token order, slots >= 0, adjacent runs of
            one slot merged.
        num_tokens: Tokens in the step.
        is_decode: One token per sequence.
        device: Where the step's index tensors go.
    """

    def __init__(
        self, segments: list[Segment], num_tokens: int, is_decode: bool, device: torch.device
    ) -> None:
        self.segments = segments
        self.num_tokens = num_tokens
        self.is_decode = is_decode
        self.device = device

    @classmethod
    def from_sequences(
        cls, slots: Sequence[int], lengths: Sequence[int], device: torch.device
    ) -> LoraStep:
        """``lengths[i]`` tokens of slot ``slots[i]`` (-1 for none), one sequence after another.

        Raises:
            ValueError: ``slots`` and ``lengths`` differ in length.
        """
        if len(slots) != len(lengths):
            raise ValueError(f"{len(slots)} slots for {len(lengths)} sequences")
        segments: list[Segment] = []
        token = 0
        for slot, length in zip(slots, lengths, strict=True):
            if slot >= 0 and length:
                if segments and segments[-1][0] == slot and segments[-1][2] == token:
                    segments[-1] = (slot, segments[-1][1], token + length)
                else:
                    segments.append((slot, token, token + length))
            token += length
        return cls(segments, token, all(n == 1 for n in lengths), device)

    @classmethod
    def from_token_slots(cls, token_slots: Sequence[int], device: torch.device) -> LoraStep:
        """The slot of each token (-1 for none), as one-token sequences."""
        return cls.from_sequences(token_slots, [1] * len(token_slots), device)

    @property
    def empty(self) -> bool:
        """Whether no token has an adapter."""
        return not self.segments

    @cached_property
    def runs(self) -> dict[int, list[tuple[int, int]]]:
        """Each slot's ``(start, end)`` token runs, slots in order of first appearance."""
        runs: dict[int, list[tuple[int, int]]] = {}
        for slot, start, end in self.segments:
            runs.setdefault(slot, []).append((start, end))
        return runs

    @property
    def active(self) -> tuple[int, ...]:
        """The step's slots, in order of first appearance."""
        return tuple(self.runs)

    @cached_property
    def groups(self) -> LoraGroups:
        """Tokens grouped by slot (the per-adapter torch path)."""
        return LoraGroups.from_runs(self.runs, self.device)

    @cached_property
    def plan(self) -> BatchedPlan | None:
        """The batched torch path's layout; None when padding every group to the longest
        would more than double the rows (the per-adapter path runs then)."""
        if not self.runs:
            return None
        lengths = [sum(end - start for start, end in group) for group in self.runs.values()]
        if len(lengths) * max(lengths) > 2 * sum(lengths):
            return None
        return BatchedPlan.from_runs(list(self.runs.values()), self.device)

    @cached_property
    def rows(self) -> LoraRows:
        """The token rows of each group, in the order of :attr:`active` (the CPU kernel)."""
        return LoraRows.from_runs(list(self.runs.values()))

    @cached_property
    def token_slots(self) -> torch.Tensor:
        """``[T]`` int64 slot of each token, -1 for none (Triton BGMV)."""
        slots = [-1] * self.num_tokens
        for slot, start, end in self.segments:
            slots[start:end] = [slot] * (end - start)
        return torch.tensor(slots, dtype=torch.int64).to(self.device, non_blocking=True)

    @cached_property
    def lora_segments(self) -> LoraSegments:
        """The segments as tensors (Triton SGMV)."""
        from openledger.serve.ops.lora_triton import LoraSegments

        def to_device(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32).to(self.device, non_blocking=True)

        lengths = [end - start for _, start, end in self.segments]
        return LoraSegments(
            to_device([start for _, start, _ in self.segments]),
            to_device(lengths),
            to_device([slot for slot, _, _ in self.segments]),
            max(lengths, default=0),
        )
