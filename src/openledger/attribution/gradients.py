"""Per-example gradients of the LoRA parameters, optionally randomly projected per layer.

A LoRA layer adds ``B @ A`` (``A``: r x in, ``B``: out x r) to a frozen linear layer. The
gradient of one example's loss with respect to that layer is the pair ``(dA, dB)``. With a
projection dimension ``k`` the pair is compressed as LoGra does, on the factors' large side
only, with fixed Gaussian matrices ``P_in`` (k x in) and ``P_out`` (k x out)::

    g_layer = concat( flatten(dA @ P_in^T),  flatten(P_out @ dB) )      # 2 * r * k values

so a record costs ``4 * sum_layers(2 * r * k)`` bytes in float32 instead of
``4 * sum_layers(r * (in + out))``. A side no longer than ``k`` is kept unprojected.
``P`` is drawn from a generator seeded by ``(seed, side length)``, scaled by ``1/sqrt(k)``,
so the same settings give the same projection on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "GradientLayout",
    "LoraPair",
    "Projector",
    "example_gradient",
    "example_loss",
    "iter_gradients",
    "lora_pairs",
]


@dataclass(frozen=True, slots=True)
class LoraPair:
    """The two factors of one LoRA layer.

    Attributes:
        name: The adapted module's name (``...layers.0.self_attn.q_proj``).
        a: ``lora_A`` weight, r x in.
        b: ``lora_B`` weight, out x r.
    """

    name: str
    a: torch.nn.Parameter
    b: torch.nn.Parameter


def lora_pairs(model: Any) -> list[LoraPair]:
    """Return the LoRA layers of a PEFT model in module order, and make only them trainable.

    Raises:
        ValueError: If the model has no LoRA layer.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    pairs = []
    for name, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if lora_a is None or lora_b is None or "default" not in lora_a:
            continue
        a, b = lora_a["default"].weight, lora_b["default"].weight
        a.requires_grad_(True)
        b.requires_grad_(True)
        pairs.append(LoraPair(name, a, b))
    if not pairs:
        raise ValueError("the model has no LoRA layers; load it with its adapter")
    return pairs


class Projector:
    """Fixed random projections of LoRA factor gradients (see the module docstring).

    Args:
        dim: Projection dimension ``k``, or ``None`` to keep gradients whole.
        seed: Seed of the projection matrices.
    """

    def __init__(self, dim: int | None, seed: int = 0) -> None:
        self.dim = dim
        self.seed = seed
        self._cache: dict[int, torch.Tensor | None] = {}

    def matrix(self, side: int) -> torch.Tensor | None:
        """Return the k x side projection, or ``None`` when ``side <= k`` (kept whole)."""
        import torch

        if self.dim is None or side <= self.dim:
            return None
        if side not in self._cache:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + side)
            scale = 1.0 / self.dim**0.5
            self._cache[side] = torch.randn(self.dim, side, generator=generator) * scale
        return self._cache[side]

    def width(self, pair: LoraPair) -> int:
        """Return how many values one example's gradient of ``pair`` has after projection."""
        rank, side_in = pair.a.shape
        side_out = pair.b.shape[0]
        return rank * (_kept(self.dim, side_in) + _kept(self.dim, side_out))

    def project(self, grad_a: torch.Tensor, grad_b: torch.Tensor) -> torch.Tensor:
        """Return the flat projected gradient of one layer (``dA``: r x in, ``dB``: out x r)."""
        import torch

        p_in, p_out = self.matrix(grad_a.shape[1]), self.matrix(grad_b.shape[0])
        left = grad_a if p_in is None else grad_a @ p_in.T.to(grad_a)
        right = grad_b if p_out is None else p_out.to(grad_b) @ grad_b
        return torch.cat([left.reshape(-1), right.reshape(-1)])


def _kept(dim: int | None, side: int) -> int:
    return side if dim is None else min(dim, side)


@dataclass(frozen=True, slots=True)
class GradientLayout:
    """Where each LoRA layer's values sit in a flat per-example gradient.

    Attributes:
        names: Layer names, in order.
        offsets: ``offsets[i]:offsets[i + 1]`` is layer ``i``'s slice; the last is the width.
    """

    names: tuple[str, ...]
    offsets: tuple[int, ...]

    @classmethod
    def of(cls, pairs: Sequence[LoraPair], projector: Projector) -> GradientLayout:
        """Lay out the layers of ``pairs`` under ``projector``."""
        offsets = [0]
        for pair in pairs:
            offsets.append(offsets[-1] + projector.width(pair))
        return cls(tuple(p.name for p in pairs), tuple(offsets))

    @property
    def width(self) -> int:
        """Values per example."""
        return self.offsets[-1]

    def slices(self) -> list[slice]:
        """One slice per layer."""
        return [slice(a, b) for a, b in zip(self.offsets, self.offsets[1:], strict=False)]


def example_loss(model: Any, input_ids: Sequence[int], labels: Sequence[int]) -> torch.Tensor:
    """Return one example's mean next-token loss over its learnt tokens (labels != -100).

    Raises:
        ValueError: If no token is learnt.
    """
    import torch

    ids = torch.tensor([list(input_ids)], device=model.device)
    targets = torch.tensor([list(labels)], device=model.device)
    if not bool((targets[0, 1:] != -100).any()):
        raise ValueError("the example has no learnt token after the first position")
    logits = model(input_ids=ids).logits[0, :-1].float()
    return torch.nn.functional.cross_entropy(logits, targets[0, 1:], ignore_index=-100)


def example_gradient(
    model: Any,
    pairs: Sequence[LoraPair],
    projector: Projector,
    input_ids: Sequence[int],
    labels: Sequence[int],
) -> torch.Tensor:
    """Return one example's flat (projected) LoRA gradient, float32 on the CPU."""
    import torch

    loss = example_loss(model, input_ids, labels)
    params = [p for pair in pairs for p in (pair.a, pair.b)]
    grads = torch.autograd.grad(loss, params)
    parts = [projector.project(grads[2 * i], grads[2 * i + 1]) for i in range(len(pairs))]
    return torch.cat(parts).float().cpu()


def iter_gradients(
    model: Any,
    pairs: Sequence[LoraPair],
    projector: Projector,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> Iterator[torch.Tensor]:
    """Yield the flat gradient of each ``(input_ids, labels)`` example, in order."""
    for input_ids, labels in examples:
        yield example_gradient(model, pairs, projector, input_ids, labels)
