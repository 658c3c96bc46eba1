"""LoRA-aware projections: per-slot weights, the step's grouping, and the chosen backend.

One :class:`LoraState` is shared by every projection of the model. The adapter store
writes slot weights into it; the model runner sets the step (:meth:`LoraState.set_batch`)
once before the forward pass; each :class:`~openledger.serve.layers.linear.Linear` that has
a :class:`LoraProjection` adds its update after the base matmul::

    out = x W^T (+ b)
    out[tokens of slot s] = out * g_s + (1 - g_s) b   for every DoRA slot s (g_s = 1 elsewhere)
    out[tokens of slot s] += (x A_s^T) B_s^T          for every slot s in the step

(DoRA: :mod:`~openledger.serve.ops.lora_dora`; its ``g_s`` is folded into ``B_s``, so every
backend serves DoRA adapters.) The state also holds each slot's ``modules_to_save`` copies
(:attr:`LoraState.heads`), which the model runner reads.

How the update is computed is the backend's business (:mod:`~openledger.serve.ops.lora_backends`:
torch, the compiled CPU kernel, Triton), chosen once from ``EngineConfig.lora_backend``; the
step's grouping of tokens by slot is encoded once
(:class:`~openledger.serve.ops.lora_step.LoraStep`) and read by every projection.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from openledger.exceptions import ConfigError, MissingDependencyError
from openledger.serve.layers.linear import Linear
from openledger.serve.ops.lora_backends import (
    CpuLoraBackend,
    LoraBackend,
    TorchLoraBackend,
    TritonLoraBackend,
)
from openledger.serve.ops.lora_cpu import cpu_lora_kernel
from openledger.serve.ops.lora_dora import DoraScales
from openledger.serve.ops.lora_step import LoraStep
from openledger.serve.ops.lora_torch import LoraWeights

__all__ = [
    "LoraBackendName",
    "LoraProjection",
    "LoraState",
    "attach_lora",
    "make_lora_backend",
    "resolve_lora_backend",
]

LoraBackendName = Literal["cpu", "torch", "triton"]


def resolve_lora_backend(
    requested: str, device: torch.device, *, cpu_kernel: bool = True
) -> LoraBackendName:
    """The backend to use: ``requested``, or under ``"auto"`` ``"triton"`` on CUDA (where
    installed), ``"cpu"`` on CPU where the compiled kernel is built and ``cpu_kernel``
    allows it, else ``"torch"`` (``EngineConfig.lora_backend``, ``EngineConfig.cpu_kernels``).

    Raises:
        ConfigError: An unknown name, or ``"cpu"`` where the kernel cannot run.
        MissingDependencyError: ``"triton"`` was asked for without triton installed.
    """
    has_triton = importlib.util.find_spec("triton") is not None
    on_cpu = device.type == "cpu" and cpu_kernel
    if requested == "auto":
        if device.type == "cuda" and has_triton:
            return "triton"
        return "cpu" if on_cpu and cpu_lora_kernel() is not None else "torch"
    if requested == "torch":
        return "torch"
    if requested == "cpu":
        if not (on_cpu and cpu_lora_kernel() is not None):
            raise ConfigError(
                "lora_backend='cpu' needs the compiled CPU kernel: a CPU device, a C "
                "compiler, and cpu_kernels=True"
            )
        return "cpu"
    if requested == "triton":
        if not has_triton:
            raise MissingDependencyError(
                "the triton LoRA backend needs `pip install openledger[gpu]`"
            )
        return "triton"
    raise ConfigError(f"unknown LoRA backend {requested!r}; use 'auto', 'cpu', 'torch' or 'triton'")


def make_lora_backend(
    name: LoraBackendName,
    shapes: Mapping[str, tuple[int, int]] | None,
    num_slots: int,
    device: torch.device,
    *,
    batched: bool = True,
) -> LoraBackend:
    """Build a resolved backend (see :func:`resolve_lora_backend`).

    Raises:
        ConfigError: Triton without each module's ``(in, out)`` features.
    """
    if name == "triton":
        if shapes is None:
            raise ConfigError("the triton LoRA backend needs each module's (in, out) features")
        return TritonLoraBackend(shapes, num_slots, device, batched=batched)
    if name == "cpu":
        kernel = cpu_lora_kernel()
        assert kernel is not None  # NOTE: checked by resolve_lora_backend
        return CpuLoraBackend(kernel, batched=batched)
    return TorchLoraBackend(batched=batched)


class LoraState:
    """Slot weights per projection, the current step, and the backend that computes it.

    Args:
        module_names: The model's LoRA-capable projections (``layers.0.self_attn.qkv_proj``),
            or a mapping of them to ``(in_features, out_features)`` (needed by Triton).
        num_slots: Device slots.
        device: Where the step's token indices live.
        backend: ``"auto"``, ``"cpu"``, ``"torch"`` or ``"triton"`` (see
            :func:`resolve_lora_backend`).
        cpu_kernel: Whether ``"auto"`` may pick the compiled CPU kernel.
        batched: Whether steady steps may take the batched matmul.

    Raises:
        ConfigError: An unknown or unusable backend, or Triton without module shapes.
    """

    def __init__(
        self,
        module_names: Iterable[str] | Mapping[str, tuple[int, int]],
        num_slots: int,
        device: torch.device | None = None,
        *,
        backend: str = "auto",
        cpu_kernel: bool = True,
        batched: bool = True,
    ) -> None:
        self.num_slots = num_slots
        self.device = device or torch.device("cpu")
        self.backend_name = resolve_lora_backend(backend, self.device, cpu_kernel=cpu_kernel)
        shapes = dict(module_names) if isinstance(module_names, Mapping) else None
        self.backend = make_lora_backend(
            self.backend_name, shapes, num_slots, self.device, batched=batched
        )
        self.slots: dict[str, list[LoraWeights | None]] = {
            name: [None] * num_slots for name in module_names
        }
        self.dora = DoraScales(num_slots, self.device)
        """DoRA slots' output factors per projection."""
        self.heads: list[Mapping[str, torch.Tensor]] = [{}] * num_slots
        """Each slot's ``modules_to_save`` copies (``embed_tokens``, ``lm_head``)."""
        self.version = 0
        """Counts slot changes (backends key their caches by it)."""
        self.step: LoraStep | None = None
        self.steady_steps = 0
        """Consecutive steps before this one with its adapters and no slot changed since."""
        self._previous: tuple[tuple[int, ...], int] | None = None

    def install(
        self,
        slot: int,
        modules: Mapping[str, LoraWeights] | None,
        heads: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Put an adapter's weights (already on the device) into ``slot``; None empties it.

        The weights are kept in the layout the backend reads (:meth:`LoraBackend.layout`);
        ``heads`` are its ``modules_to_save`` copies by module (``lm_head``,
        ``embed_tokens``), kept by reference.
        """
        self.version += 1
        self.heads[slot] = {} if modules is None or heads is None else dict(heads)
        for name, per_slot in self.slots.items():
            weights = None if modules is None else modules.get(name)
            if weights is not None:
                weights = self.backend.layout(weights)
            per_slot[slot] = weights
            self.backend.install(name, slot, weights)
            self.dora.install(name, slot, None if weights is None else weights.dora)

    def set_batch(self, slots: Sequence[int], query_lens: Sequence[int]) -> None:
        """Set the step: sequence ``i`` has ``query_lens[i]`` tokens of slot ``slots[i]``
        (-1 for none), laid out one sequence after another."""
        self.set_step(LoraStep.from_sequences(slots, query_lens, self.device))

    def set_step(self, step: LoraStep) -> None:
        """Set a step encoded elsewhere, and prepare the backend for it."""
        # NOTE: stacking a step's adapters for a batched matmul costs a copy of their
        # weights; it pays off over a run of steps with the same adapters (decode), not
        # for a set seen once or twice (a prefill and its first decode step, or steps
        # whose adapters change every time).
        current = (step.active, self.version)
        self.steady_steps = self.steady_steps + 1 if current == self._previous else 0
        self._previous = current
        self.step = step
        steady = self.steady_steps >= STEADY_STEPS
        self.backend.prepare(step, steady=steady, version=self.version)
        self.dora.prepare(step)


STEADY_STEPS = 2
"""Steps with the same adapters seen before a step counts as steady (stacked copies)."""


class LoraProjection:
    """The LoRA side of one projection: hands its output to the state's backend.

    Args:
        state: The model's shared state.
        name: This projection's module name.
    """

    def __init__(self, state: LoraState, name: str) -> None:
        self.state = state
        self.name = name
        self.weights = state.slots[name]

    def apply(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """Add the update of every token's adapter to ``out [T, O]`` in place (DoRA slots'
        base outputs rescaled first)."""
        step = self.state.step
        if step is not None and not step.empty:
            self.state.dora.apply(self.name, out)
            self.state.backend.apply(self.name, self.weights, out, x)


def attach_lora(
    model: nn.Module,
    num_slots: int,
    device: torch.device,
    *,
    backend: str = "auto",
    cpu_kernel: bool = True,
    batched: bool = True,
) -> LoraState:
    """Give every :class:`Linear` of ``model`` a LoRA side sharing one new state.

    Args:
        model: The engine's model.
        num_slots: Device slots.
        device: Where the model runs.
        backend: See :func:`resolve_lora_backend` (``EngineConfig.lora_backend``).
        cpu_kernel: Whether ``"auto"`` may pick the compiled CPU kernel
            (``EngineConfig.cpu_kernels``).
        batched: Whether steady steps may take the batched matmul
            (``EngineConfig.lora_batched_decode``).

    Returns:
        The shared state (the adapter store installs weights into it).
    """
    linears = {name: m for name, m in model.named_modules() if isinstance(m, Linear)}
    shapes = {name: (m.input_size, m.offsets[-1]) for name, m in linears.items()}
    state = LoraState(
        shapes, num_slots, device, backend=backend, cpu_kernel=cpu_kernel, batched=batched
    )
    for name, linear in linears.items():
        linear.lora = LoraProjection(state, name)
    return state
