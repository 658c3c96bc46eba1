"""Task-arithmetic combinations of equally shaped tensors (one side of a LoRA merge).

The semantics are PEFT's ``merge_utils`` (so a merge gives PEFT's tensors)::

    linear       sum_i w_i t_i
    ties         keep the top ``density`` fraction of |t_i| per tensor; elect a sign per
                 entry (sign of the sum, or of the count of signs: "frequency"); average
                 the weighted entries that agree with it
    dare_linear  keep each entry with probability ``density``, divide by it; then linear
    dare_ties    the same random pruning, then ties' sign election and disjoint mean
"""

from __future__ import annotations

import torch

__all__ = ["combine_tensors", "magnitude_prune", "random_prune"]


def magnitude_prune(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ``int(density * numel)`` entries of largest magnitude."""
    if density >= 1:
        return tensor
    keep = int(density * tensor.numel())
    flat_mask = torch.zeros(tensor.numel(), dtype=tensor.dtype)
    flat_mask[tensor.abs().reshape(-1).topk(keep).indices] = 1
    return tensor * flat_mask.view_as(tensor)


def random_prune(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability ``density`` and rescale the kept ones by 1/density."""
    if density >= 1:
        return tensor
    keep = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * keep / density


def _elected_signs(stacked: torch.Tensor, method: str) -> torch.Tensor:
    votes = stacked.sum(dim=0) if method == "total" else stacked.sign().sum(dim=0)
    majority = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)
    return stacked.sign() == majority


def combine_tensors(
    kind: str,
    tensors: list[torch.Tensor],
    weights: torch.Tensor,
    density: float | None,
    sign_method: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """Combine same-shaped ``tensors`` with ``weights`` by ``kind``.

    Args:
        kind: ``linear``, ``ties``, ``dare_linear`` or ``dare_ties``.
        tensors: One tensor per source, all the same shape.
        weights: ``[len(tensors)]`` coefficients.
        density: Kept fraction (``ties`` and ``dare_*``).
        sign_method: ``total`` or ``frequency`` (``*ties``).
        generator: Random source of DARE's pruning, drawn tensor by tensor in order.

    Returns:
        The combined tensor.

    Raises:
        ValueError: An unknown ``kind``, or no density for a pruning kind.
    """
    if kind != "linear":
        if density is None:
            raise ValueError(f"{kind} needs a density")
        if kind == "ties":
            tensors = [magnitude_prune(t, density) for t in tensors]
        elif kind in ("dare_linear", "dare_ties"):
            tensors = [random_prune(t, density, generator) for t in tensors]
        else:
            raise ValueError(f"unknown combination {kind!r}")
    stacked = torch.stack(tensors)
    weighted = stacked * weights.to(stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
    if not kind.endswith("ties"):
        return weighted.sum(dim=0)
    agree = _elected_signs(stacked, sign_method)
    kept = (weighted * agree).sum(dim=0)
    return kept / agree.sum(dim=0).clamp(min=1.0)
