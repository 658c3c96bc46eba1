"""One LoRA backend interface, one implementation per device family.

A backend computes ``out[tokens of slot s] += (x A_s^T) B_s^T`` for every slot of a step,
for each projection of the model. The projection layer
(:class:`~openledger.serve.layers.lora.LoraProjection`) knows nothing about which backend
runs; :class:`~openledger.serve.layers.lora.LoraState` calls the backend in three places:

* :meth:`LoraBackend.layout` when an adapter's weights are installed in a slot (the form
  this backend reads them in), and :meth:`LoraBackend.install` after it;
* :meth:`LoraBackend.prepare` once per step, with the step's
  :class:`~openledger.serve.ops.lora_step.LoraStep` and whether the step is *steady* (the
  same adapters as the steps before it, no slot changed);
* :meth:`LoraBackend.apply` per projection.

Implementations (``EngineConfig.lora_backend``):

* :class:`TorchLoraBackend` (any device): on steady steps one batched matmul over the
  step's adapters stacked and padded to the longest group (:mod:`.lora_batched`; the stack
  is a copy of their weights, which pays off over a run of steps with the same adapters),
  else two matmuls per adapter over its own tokens (:func:`.lora_torch.add_lora`).
* :class:`CpuLoraBackend` (float32 on CPU): the compiled kernel (:mod:`.lora_cpu`), one call
  per projection over every adapter of the step, reading each weight once, for steps with at
  most :data:`KERNEL_MAX_ROWS` tokens per adapter; longer steps take the torch backend.
* :class:`TritonLoraBackend` (CUDA): SGMV over runs of equal slots for prefill, BGMV per
  token for decode, over dense per-slot stacks (:mod:`.lora_stack`); steady decode steps take
  the torch backend's batched matmul, which measured faster on an H100 (RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from openledger.serve.ops.lora_batched import BatchedWeights, add_lora_batched, stack_group_weights
from openledger.serve.ops.lora_cpu import CpuLoraKernel, KernelEntry, LoraCpuTable, kernel_layout
from openledger.serve.ops.lora_stack import SlotStack
from openledger.serve.ops.lora_step import LoraStep
from openledger.serve.ops.lora_torch import LoraWeights, add_lora, fuse_expand

__all__ = [
    "KERNEL_MAX_ROWS",
    "CpuLoraBackend",
    "LoraBackend",
    "TorchLoraBackend",
    "TritonLoraBackend",
]

KERNEL_MAX_ROWS = 128
"""Tokens per adapter up to which the CPU kernel beats per-adapter matmuls."""

Slots = Sequence[LoraWeights | None]
_Key = tuple[tuple[int, ...], int]


class LoraBackend(Protocol):
    """Computes a step's LoRA updates (see the module docstring)."""

    name: str

    def layout(self, weights: LoraWeights) -> LoraWeights:
        """The form a slot's weights are kept in for this backend."""
        ...

    def install(self, module: str, slot: int, weights: LoraWeights | None) -> None:
        """A slot of ``module`` changed (after :meth:`layout`)."""
        ...

    def prepare(self, step: LoraStep, *, steady: bool, version: int) -> None:
        """Take the step's layout before its forward pass (``version`` counts slot changes)."""
        ...

    def apply(self, module: str, slots: Slots, out: torch.Tensor, x: torch.Tensor) -> None:
        """Add the update of every token's adapter to ``out [T, O]`` in place."""
        ...


class TorchLoraBackend:
    """torch ops on any device: batched on steady steps, else per adapter.

    Args:
        batched: Whether steady steps may take the batched matmul
            (``EngineConfig.lora_batched_decode``).
    """

    name = "torch"

    def __init__(self, *, batched: bool = True) -> None:
        self.batched = batched
        self._step: LoraStep | None = None
        self._key: _Key = ((), 0)
        self._steady = False
        self._stacked: dict[str, tuple[_Key, BatchedWeights | None]] = {}

    def layout(self, weights: LoraWeights) -> LoraWeights:
        """Slices of ``B`` fused into one expand."""
        return fuse_expand(weights)

    def install(self, module: str, slot: int, weights: LoraWeights | None) -> None:
        """Nothing to do: stacks are keyed by the slot version."""

    def prepare(self, step: LoraStep, *, steady: bool, version: int) -> None:
        """Remember the step (stacks of earlier adapters are freed as projections run)."""
        self._step, self._steady, self._key = step, steady, (step.active, version)

    def batches(self, module: str) -> bool:
        """Whether ``module`` takes the batched matmul this step: a steady step (or one whose
        adapters it already stacked) with a plan that pads at most twice the rows."""
        step = self._step
        if step is None or step.plan is None or not self.batched:
            return False
        stacked = self._stacked.get(module)
        return self._steady or (stacked is not None and stacked[0] == self._key)

    def stacked(self, module: str) -> bool:
        """Whether ``module`` holds a stacked copy of a step's adapters."""
        return module in self._stacked

    def forget(self, module: str, *, stale_only: bool = False) -> None:
        """Free ``module``'s stacked copy (with ``stale_only``, only if it holds other
        adapters than this step's, e.g. across a prefill before more decode steps)."""
        stacked = self._stacked.get(module)
        if stacked is not None and not (stale_only and stacked[0] == self._key):
            del self._stacked[module]

    def apply(self, module: str, slots: Slots, out: torch.Tensor, x: torch.Tensor) -> None:
        """The batched matmul where :meth:`batches`, else two matmuls per adapter."""
        step = self._step
        if step is None or step.empty:
            return
        if not self.batches(module):
            self.forget(module)
            add_lora(out, x, step.groups, slots)
            return
        stacked = self._stacked.get(module)
        if stacked is None or stacked[0] != self._key:  # NOTE: reused while unchanged
            weights = [slots[slot] for slot in step.active]
            stacked = (self._key, stack_group_weights(weights, x.shape[1], out.shape[1]))
            self._stacked[module] = stacked
        assert step.plan is not None  # NOTE: checked by batches()
        if stacked[1] is not None:
            add_lora_batched(out, x, step.plan, stacked[1])


class CpuLoraBackend:
    """The compiled CPU kernel for float32 steps of at most :attr:`max_rows` tokens per
    adapter; other steps take the torch backend.

    Args:
        kernel: The compiled kernel.
        batched: Passed to the torch backend that serves longer steps.
    """

    name = "cpu"

    def __init__(self, kernel: CpuLoraKernel, *, batched: bool = True) -> None:
        self.kernel = kernel
        self.max_rows = KERNEL_MAX_ROWS
        self.torch = TorchLoraBackend(batched=batched)
        self._step: LoraStep | None = None
        self._key: _Key = ((), 0)
        self._tables: dict[str, tuple[_Key, LoraCpuTable]] = {}
        self._entries: dict[tuple[str, int], tuple[LoraWeights, KernelEntry]] = {}

    def layout(self, weights: LoraWeights) -> LoraWeights:
        """The kernel's layout (``B^T`` rows) for float32 weights, else fused slices."""
        return kernel_layout(weights) if weights.a.dtype == torch.float32 else fuse_expand(weights)

    def install(self, module: str, slot: int, weights: LoraWeights | None) -> None:
        """Nothing to do: tables are keyed by the slot version."""

    def prepare(self, step: LoraStep, *, steady: bool, version: int) -> None:
        """Remember the step; the torch backend prepares it too."""
        self._step, self._key = step, (step.active, version)
        self.torch.prepare(step, steady=steady, version=version)

    def applies(self, step: LoraStep, x: torch.Tensor) -> bool:
        """Whether the kernel computes this step's updates of ``x``."""
        return x.dtype == torch.float32 and step.rows.max_rows <= self.max_rows

    def apply(self, module: str, slots: Slots, out: torch.Tensor, x: torch.Tensor) -> None:
        """One kernel call over every adapter of the step, or the torch backend."""
        step = self._step
        if step is None or step.empty:
            return
        if not self.applies(step, x):
            self.torch.apply(module, slots, out, x)
            return
        found = self._tables.get(module)
        if found is None or found[0] != self._key:  # NOTE: reused while unchanged
            entries = [self._entry(module, slots, s, x.shape[1], out.shape[1]) for s in step.active]
            found = (self._key, LoraCpuTable(entries, x.shape[1], out.shape[1]))
            self._tables[module] = found
        self.kernel.apply(out, x, step.rows, found[1])

    def _entry(
        self, module: str, slots: Slots, slot: int, in_features: int, out_features: int
    ) -> KernelEntry | None:
        weights = slots[slot]
        if weights is None:
            self._entries.pop((module, slot), None)
            return None
        cached = self._entries.get((module, slot))
        if cached is not None and cached[0] is weights:
            return cached[1]
        entry = KernelEntry.of(weights, in_features, out_features)
        self._entries[(module, slot)] = (weights, entry)
        return entry


class TritonLoraBackend:
    """SGMV / BGMV Triton kernels over per-slot stacks; steady decode steps take the torch
    backend's batched matmul.

    Args:
        shapes: Each projection's ``(in_features, out_features)``.
        num_slots: Device slots.
        device: Where the stacks live.
        batched: Passed to the torch backend.
    """

    name = "triton"

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, int]],
        num_slots: int,
        device: torch.device,
        *,
        batched: bool = True,
    ) -> None:
        self.shapes, self.num_slots, self.device = dict(shapes), num_slots, device
        self.stacks: dict[str, SlotStack] = {}
        self.torch = TorchLoraBackend(batched=batched)
        self._step: LoraStep | None = None

    def layout(self, weights: LoraWeights) -> LoraWeights:
        """Slices of ``B`` fused into one expand."""
        return fuse_expand(weights)

    def install(self, module: str, slot: int, weights: LoraWeights | None) -> None:
        """Write the slot into ``module``'s dense stack (created on first use)."""
        stack = self.stacks.get(module)
        if stack is None:
            if weights is None:
                return
            in_features, out_features = self.shapes[module]
            stack = SlotStack(
                self.num_slots, in_features, out_features, weights.a.dtype, self.device
            )
            self.stacks[module] = stack
        stack.install(slot, weights)

    def prepare(self, step: LoraStep, *, steady: bool, version: int) -> None:
        """Remember the step; the torch backend prepares it too (steady decode steps)."""
        self._step = step
        self.torch.prepare(step, steady=steady, version=version)

    def apply(self, module: str, slots: Slots, out: torch.Tensor, x: torch.Tensor) -> None:
        """BGMV for decode, SGMV for prefill; the batched matmul on steady decode steps."""
        from openledger.serve.ops.lora_triton import (
            bgmv_expand,
            bgmv_shrink,
            sgmv_expand,
            sgmv_shrink,
        )

        step = self._step
        if step is None or step.empty:
            return
        if step.is_decode and self.torch.batches(module):
            self.torch.apply(module, slots, out, x)
            return
        self.torch.forget(module, stale_only=True)
        stack = self.stacks.get(module)
        if stack is None:
            return
        if step.is_decode:
            y = bgmv_shrink(x, stack.a, stack.ranks, step.token_slots)
            bgmv_expand(y, stack.b, stack.ranks, step.token_slots, out)
        else:
            y = sgmv_shrink(x, stack.a, stack.ranks, step.lora_segments)
            sgmv_expand(y, stack.b, stack.ranks, step.lora_segments, out)
