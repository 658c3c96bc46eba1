"""DoRA on top of the LoRA backends: per-slot output factors applied batched across slots.

PEFT's DoRA layer (``peft/tuners/lora/dora.py``) computes, for an input ``x`` of a
projection ``W`` (bias ``b``) with update ``s B A`` and magnitude ``m``::

    g   = m / ||W + s B A||_row          (one factor per output row; the norm is detached)
    out = x W^T + b + (g - 1) (x W^T) + g s (x A^T) B^T
        = g (x W^T + b) + (1 - g) b + (x A^T) (g s B)^T

``g`` depends only on the adapter and the base weights, so it is worked out once when an
adapter is loaded (:func:`dora_update`), folded into ``B`` (``g s B``: what every backend
then computes as a plain LoRA update) and kept as :class:`DoraFactors`: ``scale = g`` and
``shift = (1 - g) b`` per output column of the fused projection (1 and 0 on the columns of
slices that are not DoRA). :class:`DoraScales` keeps each projection's factors per slot
stacked, and before a step's LoRA updates rescales the base output of the tokens of DoRA
slots, all slots at once::

    out[rows] = out[rows] * scale[slot of row] + shift[slot of row]

Tokens of other slots and without an adapter are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from openledger.serve.ops.lora_step import LoraStep

__all__ = ["DoraFactors", "DoraScales", "dora_update"]


@dataclass(frozen=True, slots=True)
class DoraFactors:
    """One DoRA adapter's output factors of one (fused) projection.

    Attributes:
        scale: ``[O]`` ``m / ||W + s B A||_row`` on DoRA columns, 1 elsewhere.
        shift: ``[O]`` ``(1 - scale) * bias``; None for a projection without bias.
    """

    scale: torch.Tensor
    shift: torch.Tensor | None

    @property
    def num_bytes(self) -> int:
        """Bytes held by the tensors."""
        tensors = [self.scale] if self.shift is None else [self.scale, self.shift]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device, dtype: torch.dtype) -> DoraFactors:
        """A copy on ``device`` in ``dtype`` (no copy when already there)."""
        shift = None if self.shift is None else self.shift.to(device, dtype)
        return DoraFactors(self.scale.to(device, dtype), shift)


def dora_update(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, magnitude: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``g`` and ``g s B`` of one DoRA module, in float32.

    Args:
        weight: ``[O, H]`` the base projection's weight (this module's rows).
        a: ``[r, H]`` ``lora_A``.
        b: ``[O, r]`` ``lora_B`` with the scaling ``s`` folded in.
        magnitude: ``[O]`` ``lora_magnitude_vector``.

    Returns:
        ``(g [O], g s B [O, r])``.
    """
    b32 = b.float()
    norm = torch.linalg.norm(weight.float() + b32 @ a.float(), dim=1)
    g = magnitude.float() / norm
    return g, b32 * g[:, None]


class DoraScales:
    """Each projection's DoRA factors per slot, applied batched across a step's slots.

    Args:
        num_slots: Device slots.
        device: Where the stacks and the step's row indices live.
    """

    def __init__(self, num_slots: int, device: torch.device) -> None:
        self.num_slots = num_slots
        self.device = device
        self.scales: dict[str, torch.Tensor] = {}
        """``[num_slots, O]`` per projection that ever held a DoRA adapter."""
        self.shifts: dict[str, torch.Tensor] = {}
        """``[num_slots, O]`` per projection with a bias that held one."""
        self.present: dict[str, list[bool]] = {}
        self._step: LoraStep | None = None
        self._rows: dict[tuple[int, ...], _Rows] = {}

    def install(self, module: str, slot: int, factors: DoraFactors | None) -> None:
        """Put a slot's factors of ``module`` in place (None: the slot's adapter is no DoRA
        adapter of ``module``, or the slot was emptied)."""
        present = self.present.get(module)
        if factors is None:
            if present is not None:
                present[slot] = False
            return
        if present is None:
            present = self.present[module] = [False] * self.num_slots
        scale = factors.scale
        if module not in self.scales:
            self.scales[module] = scale.new_ones(self.num_slots, scale.shape[0])
        self.scales[module][slot] = scale
        if factors.shift is not None and module not in self.shifts:
            self.shifts[module] = scale.new_zeros(self.num_slots, scale.shape[0])
        if module in self.shifts:
            shifts = self.shifts[module]
            shifts[slot] = 0.0 if factors.shift is None else factors.shift
        present[slot] = True

    def prepare(self, step: LoraStep) -> None:
        """Take the step (row indices are built when a projection first needs them)."""
        self._step = step
        self._rows = {}

    def apply(self, module: str, out: torch.Tensor) -> None:
        """Rescale the base output ``out [T, O]`` of the tokens of ``module``'s DoRA slots."""
        present = self.present.get(module)
        step = self._step
        if present is None or step is None:
            return
        slots = tuple(slot for slot in step.active if present[slot])
        if not slots:
            return
        rows = self._rows.get(slots)
        if rows is None:
            rows = self._rows[slots] = self._rows_of(step, slots)
        shifts = self.shifts.get(module)
        scales = self.scales[module]
        if isinstance(rows, slice):  # NOTE: one slot over one run of tokens
            slot = slots[0]
            part = out[rows]
            part.mul_(scales[slot])
            if shifts is not None:
                part.add_(shifts[slot])
            return
        index, slot_of_row = rows
        if index is None:  # NOTE: every token of the step, in order (sorted decode steps)
            out.mul_(scales.index_select(0, slot_of_row))
            if shifts is not None:
                out.add_(shifts.index_select(0, slot_of_row))
            return
        scaled = out.index_select(0, index).mul_(scales.index_select(0, slot_of_row))
        if shifts is not None:
            scaled.add_(shifts.index_select(0, slot_of_row))
        out.index_copy_(0, index, scaled)

    def _rows_of(self, step: LoraStep, slots: tuple[int, ...]) -> _Rows:
        runs = [(slot, start, end) for slot in slots for start, end in step.runs[slot]]
        if len(runs) == 1:
            return slice(runs[0][1], runs[0][2])
        index = [row for _, start, end in runs for row in range(start, end)]
        slot_of_row = [slot for slot, start, end in runs for _ in range(start, end)]

        def to_device(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)

        every_row = index == list(range(step.num_tokens))
        return None if every_row else to_device(index), to_device(slot_of_row)


_Rows = tuple[torch.Tensor | None, torch.Tensor] | slice
"""The rows a step's DoRA slots rescale: one run (a slice), or the rows (None: every row
of the step, in order) and each row's slot."""
