"""The state LoRA-aware projections read: per-slot weights and the step's token grouping.

One :class:`LoraState` is shared by every projection of the model. The adapter store
writes slot weights into it; the model runner sets the step's metadata
(:class:`LoraBatch`) once before the forward pass; each
:class:`~openledger.serve.layers.linear.Linear` that has a :class:`LoraProjection` adds
its update after the base matmul::

    out = x W^T (+ b)
    out[tokens of slot s] += (x A_s^T) B_s^T      for every slot s in the step

Ways to compute it, chosen per step (the results agree up to rounding):

* ``cpu kernel`` (CPU, float32, a compiler at hand; steps with at most
  ``LoraState.kernel_max_rows`` tokens per adapter, i.e. decode and short chunks): one call
  of the compiled kernel per projection over every adapter of the step, reading each
  weight once (:mod:`~openledger.serve.ops.lora_cpu`).
* ``triton`` (CUDA; or forced, e.g. under ``TRITON_INTERPRET=1``): SGMV over the step's
  runs of equal slots for prefill, BGMV (per-token gather) for decode, over dense per-slot
  stacks (:class:`~openledger.serve.layers.lora_stack.SlotStack`); except that a run of
  decode steps with the same adapters takes the torch backend's batched ``bmm`` (below),
  which measured faster on an H100 (``benchmarks/gpu_check.py``: 23.5 against 32.7 us of
  GPU time and 56 against 71 us a call, 64 adapters x 64 tokens on a Llama-3-8B q|k|v).
* ``torch``: one ``bmm`` per op over every adapter of the step, tokens grouped by adapter
  and padded to the longest group (:mod:`~openledger.serve.ops.lora_batched`); when
  padding would exceed the real rows, two matmuls per adapter over its own tokens
  instead (:func:`~openledger.serve.ops.lora_torch.add_lora`).

``EngineConfig.lora_backend`` picks the backend (``"auto"``: Triton on CUDA, torch
elsewhere), ``EngineConfig.cpu_kernels`` the compiled CPU kernel and
``EngineConfig.lora_batched_decode`` the batched path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from openledger.exceptions import ConfigError, MissingDependencyError
from openledger.serve.layers.linear import Linear
from openledger.serve.layers.lora_stack import SlotStack
from openledger.serve.ops.lora_batched import (
    BatchedPlan,
    BatchedWeights,
    add_lora_batched,
    stack_group_weights,
)
from openledger.serve.ops.lora_cpu import (
    CpuLoraKernel,
    KernelEntry,
    LoraCpuTable,
    LoraRows,
    cpu_lora_kernel,
    kernel_layout,
)
from openledger.serve.ops.lora_torch import LoraGroups, LoraWeights, add_lora, fuse_expand

if TYPE_CHECKING:
    from openledger.serve.ops.lora_triton import LoraSegments

__all__ = [
    "LoraBackend",
    "LoraBatch",
    "LoraProjection",
    "LoraState",
    "attach_lora",
    "resolve_lora_backend",
]

LoraBackend = Literal["torch", "triton"]


_STEADY_STEPS = 2  # steps with the same adapters seen before the batched path stacks them
_KERNEL_MAX_ROWS = 128  # tokens per adapter up to which the CPU kernel beats per-adapter GEMMs


def resolve_lora_backend(requested: str, device: torch.device) -> LoraBackend:
    """The backend to use: ``requested``, or under ``"auto"`` ``"triton"`` on CUDA (when
    installed) and ``"torch"`` elsewhere (``EngineConfig.lora_backend``).

    Raises:
        ConfigError: An unknown backend name.
        MissingDependencyError: ``"triton"`` was asked for without triton installed.
    """
    choice = requested
    has_triton = importlib.util.find_spec("triton") is not None
    if choice == "auto":
        return "triton" if device.type == "cuda" and has_triton else "torch"
    if choice == "torch":
        return "torch"
    if choice == "triton":
        if not has_triton:
            raise MissingDependencyError(
                "the triton LoRA backend needs `pip install openledger[gpu]`"
            )
        return "triton"
    raise ConfigError(f"unknown LoRA backend {choice!r}; use 'auto', 'torch' or 'triton'")


@dataclass(frozen=True, slots=True)
class LoraBatch:
    """A step's token -> adapter metadata, computed once and read by every projection.

    Attributes:
        groups: Tokens grouped by slot (the per-adapter torch path).
        active: The slot of each token group, in order of first appearance.
        token_slots: ``[T]`` int64 slot of each token, -1 for none (Triton BGMV).
        num_tokens: ``T``.
        is_decode: One token per sequence.
        plan: The batched torch path's layout; None when padding every group to the
            longest would more than double the rows (then the per-adapter path runs),
            and under Triton for steps that are not decode steps.
        segments: Runs of equal slots (Triton SGMV); None unless the backend is Triton
            and the step is not a decode step.
        rows: The token rows of each group, in the order of ``active`` (the CPU kernel);
            None unless the backend is torch.
    """

    groups: LoraGroups
    active: tuple[int, ...]
    token_slots: torch.Tensor
    num_tokens: int
    is_decode: bool
    plan: BatchedPlan | None
    segments: LoraSegments | None = None
    rows: LoraRows | None = None

    @classmethod
    def from_sequences(
        cls,
        slots: Sequence[int],
        lengths: Sequence[int],
        device: torch.device,
        backend: LoraBackend = "torch",
    ) -> LoraBatch:
        """The metadata of a step laid out sequence by sequence: ``lengths[i]`` tokens of
        slot ``slots[i]`` (-1 for none). Built from host lists (no device sync).

        Raises:
            ValueError: ``slots`` and ``lengths`` differ in length.
        """
        if len(slots) != len(lengths):
            raise ValueError(f"{len(slots)} slots for {len(lengths)} sequences")
        runs: dict[int, list[tuple[int, int]]] = {}
        token_slots: list[int] = []
        for slot, length in zip(slots, lengths, strict=True):
            if slot >= 0 and length:
                group = runs.setdefault(slot, [])
                start = len(token_slots)
                if group and group[-1][1] == start:
                    group[-1] = (group[-1][0], start + length)
                else:
                    group.append((start, start + length))
            token_slots.extend([slot] * length)
        segments = None
        is_decode = all(n == 1 for n in lengths)
        if backend == "triton" and not is_decode:  # NOTE: decode reads token_slots (BGMV)
            from openledger.serve.ops.lora_triton import segments_from_sequences

            segments = segments_from_sequences(slots, lengths, device)
        return cls(
            groups=LoraGroups.from_sequences(slots, lengths, device),
            active=tuple(runs),
            token_slots=_to_device(token_slots, device),
            num_tokens=len(token_slots),
            is_decode=is_decode,
            plan=_plan(list(runs.values()), device) if backend == "torch" or is_decode else None,
            segments=segments,
            rows=LoraRows.from_runs(list(runs.values())) if backend == "torch" else None,
        )

    @property
    def empty(self) -> bool:
        """Whether no token has an adapter."""
        return not self.active


def _plan(runs: list[list[tuple[int, int]]], device: torch.device) -> BatchedPlan | None:
    if not runs:
        return None
    lengths = [sum(end - start for start, end in group) for group in runs]
    if len(runs) * max(lengths) > 2 * sum(lengths):
        return None
    return BatchedPlan.from_runs(runs, device)


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)


class LoraState:
    """Slot weights per projection, and the current step's :class:`LoraBatch`.

    Args:
        module_names: The model's LoRA-capable projections (``layers.0.self_attn.qkv_proj``),
            or a mapping of them to ``(in_features, out_features)`` (needed by Triton).
        num_slots: Device slots.
        device: Where the step's token indices live.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :func:`resolve_lora_backend`).
        cpu_kernel: Use the compiled CPU kernel where it is built (``EngineConfig.cpu_kernels``).

    Raises:
        ConfigError: Triton was chosen but module shapes were not given.
    """

    def __init__(
        self,
        module_names: Iterable[str] | Mapping[str, tuple[int, int]],
        num_slots: int,
        device: torch.device | None = None,
        *,
        backend: str = "auto",
        cpu_kernel: bool = True,
    ) -> None:
        self.num_slots = num_slots
        self.device = device or torch.device("cpu")
        self.backend = resolve_lora_backend(backend, self.device)
        shapes = dict(module_names) if isinstance(module_names, Mapping) else None
        if self.backend == "triton" and shapes is None:
            raise ConfigError("the triton LoRA backend needs each module's (in, out) features")
        self.shapes = shapes or {}
        names = list(module_names)
        self.slots: dict[str, list[LoraWeights | None]] = {
            name: [None] * num_slots for name in names
        }
        self.stacks: dict[str, SlotStack] = {}
        self.version = 0
        self.batch: LoraBatch | None = None
        self.batched = True
        """Whether the torch backend may use the batched path
        (``EngineConfig.lora_batched_decode``)."""
        on_cpu = cpu_kernel and self.backend == "torch" and self.device.type == "cpu"
        self.kernel: CpuLoraKernel | None = cpu_lora_kernel() if on_cpu else None
        """The compiled CPU kernel, where it could be built (see :mod:`.lora_cpu`)."""
        self.use_kernel = True
        """Whether steps may use :attr:`kernel` (tests compare paths on one state)."""
        self.kernel_max_rows = _KERNEL_MAX_ROWS
        """Steps with more tokens than this for one adapter take the torch paths."""
        self.steady_steps = 0
        """Consecutive steps before this one with its adapters and no slot changed since."""
        self._previous: tuple[tuple[int, ...], int] | None = None

    @property
    def groups(self) -> LoraGroups:
        """The current step's grouping of tokens by slot (empty before any step)."""
        return self.batch.groups if self.batch is not None else LoraGroups(())

    def install(self, slot: int, modules: Mapping[str, LoraWeights] | None) -> None:
        """Put an adapter's weights (already on the device) into ``slot``; None empties it.

        The weights are kept in the layout of the path that will read them: the CPU
        kernel's (:func:`~openledger.serve.ops.lora_cpu.kernel_layout`) where it runs,
        else with each fused projection's ``B`` in one block
        (:func:`~openledger.serve.ops.lora_torch.fuse_expand`).
        """
        self.version += 1
        for name, per_slot in self.slots.items():
            weights = None if modules is None else modules.get(name)
            if weights is not None:
                weights = self._layout(weights)
            per_slot[slot] = weights
            if self.backend == "triton" and (weights is not None or name in self.stacks):
                self._stack(name, weights).install(slot, weights)

    def _layout(self, weights: LoraWeights) -> LoraWeights:
        if self.kernel is not None and weights.a.dtype == torch.float32:
            return kernel_layout(weights)
        return fuse_expand(weights)

    def kernel_applies(self, batch: LoraBatch, x: torch.Tensor) -> bool:
        """Whether the CPU kernel computes this step's updates of ``x``."""
        return (
            self.kernel is not None
            and self.use_kernel
            and batch.rows is not None
            and batch.rows.max_rows <= self.kernel_max_rows
            and x.dtype == torch.float32
        )

    def set_batch(self, slots: Sequence[int], query_lens: Sequence[int]) -> None:
        """Set the step's metadata: sequence ``i`` has ``query_lens[i]`` tokens of slot
        ``slots[i]`` (-1 for none), laid out one sequence after another."""
        self.set_metadata(LoraBatch.from_sequences(slots, query_lens, self.device, self.backend))

    def set_metadata(self, batch: LoraBatch) -> None:
        """Set a step's metadata computed elsewhere (e.g. by the model runner)."""
        # NOTE: stacking a step's adapters for the batched path costs a copy of their
        # weights; it pays off over a run of steps with the same adapters (decode), not
        # for a set seen once or twice (a prefill and its first decode step, or steps
        # whose adapters change every time).
        current = (batch.active, self.version)
        self.steady_steps = self.steady_steps + 1 if current == self._previous else 0
        self._previous = current
        self.batch = batch

    def _stack(self, name: str, weights: LoraWeights | None) -> SlotStack:
        stack = self.stacks.get(name)
        if stack is None:
            assert weights is not None
            in_features, out_features = self.shapes[name]
            stack = SlotStack(
                self.num_slots, in_features, out_features, weights.a.dtype, self.device
            )
            self.stacks[name] = stack
        return stack


class LoraProjection:
    """The LoRA side of one projection: applies the step's adapters to its output.

    Args:
        state: The model's shared state.
        name: This projection's module name.
    """

    def __init__(self, state: LoraState, name: str) -> None:
        self.state = state
        self.name = name
        self.weights = state.slots[name]
        self._stacked_key: tuple[tuple[int, ...], int] | None = None
        self._stacked: BatchedWeights | None = None
        self._table_key: tuple[tuple[int, ...], int] | None = None
        self._table: LoraCpuTable | None = None
        self._entries: dict[int, tuple[LoraWeights, KernelEntry]] = {}

    def apply(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """Add the update of every token's adapter to ``out [T, O]`` in place."""
        batch = self.state.batch
        if batch is None or batch.empty:
            return
        if self.state.kernel_applies(batch, x):  # NOTE: the torch backend on CPU only
            self._apply_kernel(out, x, batch)
        elif batch.plan is not None and self._use_batched(batch.active):
            self._apply_batched(out, x, batch.active, batch.plan)
        elif self.state.backend == "triton":
            if self._stacked_key != (batch.active, self.state.version):
                self._stacked_key, self._stacked = None, None  # NOTE: frees a stale copy
            self._apply_triton(out, x, batch)
        else:
            self._stacked_key, self._stacked = None, None  # NOTE: frees a stale copy
            add_lora(out, x, batch.groups, self.weights)

    def _use_batched(self, active: tuple[int, ...]) -> bool:
        state = self.state
        if not state.batched:
            return False
        return state.steady_steps >= _STEADY_STEPS or self._stacked_key == (active, state.version)

    def _apply_batched(
        self, out: torch.Tensor, x: torch.Tensor, active: tuple[int, ...], plan: BatchedPlan
    ) -> None:
        key = (active, self.state.version)
        if key != self._stacked_key:  # NOTE: steps with the same adapters reuse the stacks
            weights = [self.weights[slot] for slot in active]
            self._stacked = stack_group_weights(weights, x.shape[1], out.shape[1])
            self._stacked_key = key
        if self._stacked is not None:
            add_lora_batched(out, x, plan, self._stacked)

    def _apply_kernel(self, out: torch.Tensor, x: torch.Tensor, batch: LoraBatch) -> None:
        kernel, rows = self.state.kernel, batch.rows
        assert kernel is not None
        assert rows is not None
        key = (batch.active, self.state.version)
        if key != self._table_key or self._table is None:  # NOTE: reused while unchanged
            entries = [self._entry(slot, x.shape[1], out.shape[1]) for slot in batch.active]
            self._table = LoraCpuTable(entries, x.shape[1], out.shape[1])
            self._table_key = key
        kernel.apply(out, x, rows, self._table)

    def _entry(self, slot: int, in_features: int, out_features: int) -> KernelEntry | None:
        weights = self.weights[slot]
        if weights is None:
            self._entries.pop(slot, None)
            return None
        cached = self._entries.get(slot)
        if cached is not None and cached[0] is weights:
            return cached[1]
        entry = KernelEntry.of(weights, in_features, out_features)
        self._entries[slot] = (weights, entry)
        return entry

    def _apply_triton(self, out: torch.Tensor, x: torch.Tensor, batch: LoraBatch) -> None:
        from openledger.serve.ops.lora_triton import (
            bgmv_expand,
            bgmv_shrink,
            sgmv_expand,
            sgmv_shrink,
        )

        stack = self.state.stacks.get(self.name)
        if stack is None:
            return
        if batch.is_decode:
            y = bgmv_shrink(x, stack.a, stack.ranks, batch.token_slots)
            bgmv_expand(y, stack.b, stack.ranks, batch.token_slots, out)
        else:
            assert batch.segments is not None  # NOTE: set by from_sequences under triton
            y = sgmv_shrink(x, stack.a, stack.ranks, batch.segments)
            sgmv_expand(y, stack.b, stack.ranks, batch.segments, out)


def attach_lora(
    model: nn.Module,
    num_slots: int,
    device: torch.device,
    *,
    backend: str = "auto",
    use_kernel: bool = True,
    batched: bool = True,
) -> LoraState:
    """Give every :class:`Linear` of ``model`` a LoRA side sharing one new state.

    Args:
        model: The engine's model.
        num_slots: Device slots.
        device: Where the model runs.
        backend: See :func:`resolve_lora_backend`.
        use_kernel: Whether steps may use the compiled CPU kernel (``EngineConfig.cpu_kernels``).
        batched: Whether steady decode steps may take the batched matmul
            (``EngineConfig.lora_batched_decode``).

    Returns:
        The shared state (the adapter store installs weights into it).
    """
    linears = {name: m for name, m in model.named_modules() if isinstance(m, Linear)}
    shapes = {name: (m.input_size, m.offsets[-1]) for name, m in linears.items()}
    state = LoraState(shapes, num_slots, device, backend=backend, cpu_kernel=use_kernel)
    state.batched = batched
    for name, linear in linears.items():
        linear.lora = LoraProjection(state, name)
    return state
