"""The tensors of a LoRA merge, one module at a time: ``cat``'s rank blocks
(:func:`cat_blocks`), and the task-arithmetic combinations of equally shaped tensors
(:func:`task_arithmetic`, one side at a time through :func:`combine_tensors`).

The semantics are PEFT's ``merge_utils`` (so a merge gives PEFT's tensors)::

    linear       sum_i w_i t_i
    ties         keep the top ``density`` fraction of |t_i| per tensor; elect a sign per
                 entry (sign of the sum, or of the count of signs: "frequency"); average
                 the weighted entries that agree with it
    dare_linear  keep each entry with probability ``density``, divide by it; then linear
    dare_ties    the same random pruning, then ties' sign election and disjoint mean
"""

from __future__ import annotations

import math

import torch

from openledger.exceptions import AdapterMismatchError

__all__ = [
    "cat_blocks",
    "combine_tensors",
    "magnitude_prune",
    "random_prune",
    "same_ranks",
    "task_arithmetic",
]


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


def same_ranks(module: str, a_list: list[torch.Tensor], names: list[str]) -> None:
    """Refuse sources of different ranks on ``module`` (all merges but ``cat``).

    Raises:
        AdapterMismatchError: Naming each source's rank.
    """
    ranks = [int(a.shape[0]) for a in a_list]
    if len(set(ranks)) > 1:
        found = ", ".join(f"{n}: r={r}" for n, r in zip(names, ranks, strict=True))
        raise AdapterMismatchError(
            f"linear, ties and dare merges need equal ranks; {module} has {found}. "
            "Use combination='cat' for adapters of different ranks"
        )


def cat_blocks(
    a_list: list[torch.Tensor],
    b_list: list[torch.Tensor],
    coefficients: list[tuple[float, float]],
    rank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank blocks side by side, zero-padded to the sum of the sources' ranks (as PEFT)."""
    a = a_list[0].new_zeros(rank, a_list[0].shape[1])
    b = b_list[0].new_zeros(b_list[0].shape[0], rank)
    at = 0
    for a_i, b_i, (scaling, weight) in zip(a_list, b_list, coefficients, strict=True):
        r = a_i.shape[0]
        a[at : at + r] = a_i * weight * scaling
        b[:, at : at + r] = b_i
        at += r
    return a, b


def task_arithmetic(
    kind: str,
    a_list: list[torch.Tensor],
    b_list: list[torch.Tensor],
    coefficients: list[tuple[float, float]],
    density: float | None,
    sign_method: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each side combined with ``sqrt|w s|`` (the sign on A only), then pruned/merged."""
    roots = [math.sqrt(abs(weight * scaling)) for scaling, weight in coefficients]
    signs = [1.0 if weight * scaling >= 0 else -1.0 for scaling, weight in coefficients]
    a_weights = torch.tensor([r * s for r, s in zip(roots, signs, strict=True)])
    b_weights = torch.tensor(roots)
    a = combine_tensors(kind, a_list, a_weights, density, sign_method, generator)
    b = combine_tensors(kind, b_list, b_weights, density, sign_method, generator)
    return a, b
