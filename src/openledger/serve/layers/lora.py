"""The state LoRA-aware projections read: per-slot weights and the step's token grouping.

One :class:`LoraState` is shared by every projection of the model. The adapter store
writes slot weights into it; the model runner sets the step's grouping once before the
forward pass; each :class:`~openledger.serve.layers.linear.Linear` that has a
:class:`LoraProjection` adds its update after the base matmul::

    out = x W^T (+ b)
    out[tokens of slot s] += (x A_s^T) B_s^T      for every slot s in the step
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from openledger.serve.layers.linear import Linear
from openledger.serve.ops.lora_torch import LoraGroups, LoraWeights, add_lora

__all__ = ["LoraProjection", "LoraState", "attach_lora"]


class LoraState:
    """Slot weights per projection, and the current step's grouping of tokens by slot.

    Args:
        module_names: The model's LoRA-capable projections (``layers.0.self_attn.qkv_proj``).
        num_slots: Device slots.
        device: Where the step's token indices live.
    """

    def __init__(
        self, module_names: Iterable[str], num_slots: int, device: torch.device | None = None
    ) -> None:
        self.num_slots = num_slots
        self.device = device or torch.device("cpu")
        self.slots: dict[str, list[LoraWeights | None]] = {
            name: [None] * num_slots for name in module_names
        }
        self.groups = LoraGroups(())

    def install(self, slot: int, modules: dict[str, LoraWeights] | None) -> None:
        """Put an adapter's weights (already on the device) into ``slot``; None empties it."""
        for name, per_slot in self.slots.items():
            per_slot[slot] = None if modules is None else modules.get(name)

    def set_batch(self, slots: Sequence[int], query_lens: Sequence[int]) -> None:
        """Group the step's tokens by slot: sequence ``i`` has ``query_lens[i]`` tokens of
        slot ``slots[i]`` (-1 for none), laid out one sequence after another."""
        self.groups = LoraGroups.from_sequences(slots, query_lens, self.device)


class LoraProjection:
    """The LoRA side of one projection: applies the step's adapters to its output.

    Args:
        state: The model's shared state.
        name: This projection's module name.
    """

    def __init__(self, state: LoraState, name: str) -> None:
        self.state = state
        self.weights = state.slots[name]

    def apply(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """Add the update of every token's adapter to ``out [T, O]`` in place."""
        if not self.state.groups.empty:
            add_lora(out, x, self.state.groups, self.weights)


def attach_lora(model: nn.Module, num_slots: int, device: torch.device) -> LoraState:
    """Give every :class:`Linear` of ``model`` a LoRA side sharing one new state."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, Linear)}
    state = LoraState(linears, num_slots, device)
    for name, linear in linears.items():
        linear.lora = LoraProjection(state, name)
    return state
