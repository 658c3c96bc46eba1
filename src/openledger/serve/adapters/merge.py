"""Merging registered adapters into a new PEFT adapter folder (materialised, not per request).

A request's ``adapter={"a": 0.7, "b": 0.3}`` is computed exactly at inference time and
stored nowhere. :func:`merge_adapters` instead writes the combination to disk as an
ordinary PEFT LoRA folder (``adapter_config.json``, ``adapter_model.safetensors``) plus an
``openledger_manifest.json`` naming its sources and weights, so it can be registered,
shared and loaded by PEFT like any adapter. The combinations follow PEFT's
``add_weighted_adapter`` (same tensors for the same settings)::

    cat          A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]   B = [B_1 B_2 ...]     exact, rank sum
    linear       A = sum c_i A_i,  B = sum |c_i| B_i   (c_i = sign * sqrt|w_i s_i|, same rank)
    ties         linear on magnitude-pruned tensors, majority sign, disjoint mean
    dare_linear  linear on randomly pruned, rescaled tensors (seeded)
    dare_ties    ties with DARE's random pruning

``s_i`` is adapter ``i``'s scaling (``alpha / r`` or ``alpha / sqrt(r)``); the merged
adapter has ``lora_alpha = r`` (scaling 1), so ``B A`` is its whole update. Only ``cat``
reproduces ``sum w_i s_i B_i A_i`` exactly; the others approximate it (``linear`` mixes
cross terms ``B_i A_j``), as in PEFT.

DoRA adapters and adapters with ``modules_to_save`` copies are refused: a DoRA update
(``m / ||W + s B A|| * (W + s B A) - W``) is not linear in its factors, so no LoRA of the
combined factors reproduces a weighted sum of DoRA updates, and a weighted sum of whole
``lm_head``/``embed_tokens`` copies is no adapter PEFT combines either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from safetensors.torch import save_file

from openledger.exceptions import ConfigError
from openledger.serve.adapters.loading import WEIGHTS_FILE
from openledger.serve.adapters.merge_files import (
    MERGED_MANIFEST_FORMAT,
    MergeSource,
    common_base,
    output_folder,
    read_tensors,
    write_config,
    write_manifest,
)
from openledger.serve.adapters.merge_ops import cat_blocks, same_ranks, task_arithmetic

if TYPE_CHECKING:
    from openledger.serve.adapters.store import AdapterStore

__all__ = [
    "MERGED_MANIFEST_FORMAT",
    "Combination",
    "MergeSource",
    "merge_adapter_specs",
    "merge_adapters",
]

Combination = Literal["linear", "cat", "ties", "dare_linear", "dare_ties"]
_COMBINATIONS = ("linear", "cat", "ties", "dare_linear", "dare_ties")
_PRUNED = ("ties", "dare_linear", "dare_ties")
_PROJECTIONS = (
    "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
    "down_proj",
)  # fmt: skip


def merge_adapters(
    store: AdapterStore,
    weights: Mapping[str, float],
    output_dir: str | os.PathLike[str],
    *,
    combination: Combination = "cat",
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> Path:
    """Write the weighted combination of registered adapters as a new PEFT adapter folder.

    ::

        path = merge_adapters(engine.adapters, {"medqa": 0.7, "law": 0.3}, "out/mix")
        engine.add_adapter("mix", path)

    Args:
        store: The adapter store holding the sources (``engine.adapters``).
        weights: ``{name: weight}`` in merge order (the order of ``cat``'s rank blocks and
            of DARE's random draws). Negative weights subtract.
        output_dir: A new or empty folder to write.
        combination: ``"cat"`` (exact; rank = sum of ranks), ``"linear"``, ``"ties"``,
            ``"dare_linear"`` or ``"dare_ties"`` (those need equal ranks per module). With
            one source every combination is ``"linear"``, as in PEFT.
        density: Fraction of values kept by ``ties`` / ``dare_*`` (required there, in
            ``(0, 1]``; not allowed for ``cat`` / ``linear``).
        seed: Seeds DARE's random pruning (``torch.Generator().manual_seed(seed)``, draws
            in PEFT's order: modules in model order, A then B, sources in order).
        majority_sign_method: TIES sign election: ``"total"`` or ``"frequency"``.

    Returns:
        The written folder.

    Raises:
        AdapterNotFoundError: A name is not registered in ``store``.
        ConfigError: No sources, a non-finite weight, an unknown combination, a bad or
            missing density, a non-empty ``output_dir``, or a DoRA or ``modules_to_save``
            source.
        AdapterMismatchError: Sources with different ranks on one module (all but ``cat``),
            or manifests naming different base weights.
        AdapterFormatError: A source's weights became unreadable since registration.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(f"merge_adapters needs a non-empty {{name: weight}}: {weights!r}")
    sources = [MergeSource(store.spec(name), _weight(name, w)) for name, w in weights.items()]
    return merge_adapter_specs(
        sources,
        output_dir,
        combination=combination,
        density=density,
        seed=seed,
        majority_sign_method=majority_sign_method,
    )


def merge_adapter_specs(
    sources: Sequence[MergeSource],
    output_dir: str | os.PathLike[str],
    *,
    combination: Combination = "cat",
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> Path:
    """:func:`merge_adapters` from adapter specs instead of names (same arguments, errors)."""
    if not sources:
        raise ConfigError("merge_adapters needs at least one adapter")
    for source in sources:
        spec = source.spec
        if spec.use_dora or spec.saved_modules:
            what = "a DoRA adapter" if spec.use_dora else f"saving {sorted(spec.saved_modules)}"
            raise ConfigError(
                f"adapter {spec.name!r} is {what}: merging is refused for DoRA and "
                "modules_to_save adapters (their updates are not linear in their weights); "
                "serve it alone"
            )
    kind = _check_options(combination, density, majority_sign_method, len(sources))
    folder = output_folder(output_dir)
    base = common_base(sources)
    tensors = {i: read_tensors(s.spec) for i, s in enumerate(sources)}
    generator = torch.Generator().manual_seed(seed)
    rank_cat = sum(max(s.spec.ranks.values()) for s in sources)
    merged: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module in _modules_in_order(sources):
        parts = [
            (tensors[i], s.spec.scalings[module], s.weight)
            for i, s in enumerate(sources)
            if module in s.spec.ranks
        ]
        prefix = f"base_model.model.{module}"
        a_list = [t[f"{prefix}.lora_A.weight"].float() for t, _, _ in parts]
        b_list = [t[f"{prefix}.lora_B.weight"].float() for t, _, _ in parts]
        coefficients = [(scaling, weight) for _, scaling, weight in parts]
        if kind == "cat":
            a, b = cat_blocks(a_list, b_list, coefficients, rank_cat)
        else:
            same_ranks(module, a_list, [s.spec.name for s in sources if module in s.spec.ranks])
            a, b = task_arithmetic(
                kind, a_list, b_list, coefficients, density, majority_sign_method, generator
            )
        merged[f"{prefix}.lora_A.weight"], merged[f"{prefix}.lora_B.weight"] = a, b
        ranks[module] = int(a.shape[0])
    folder.mkdir(parents=True, exist_ok=True)  # NOTE: only once every check has passed
    save_file({k: v.contiguous() for k, v in merged.items()}, str(folder / WEIGHTS_FILE))
    write_config(folder, sources, ranks)
    options = {"density": density, "seed": seed, "majority_sign_method": majority_sign_method}
    write_manifest(folder, sources, kind, options, base)
    return folder


def _weight(name: str, weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"merge weight of {name!r} must be a number: {weight!r}")
    if not math.isfinite(weight):
        raise ConfigError(f"merge weight of {name!r} must be finite: {weight!r}")
    return float(weight)


def _check_options(
    combination: str, density: float | None, sign_method: str, num_sources: int
) -> str:
    if combination not in _COMBINATIONS:
        raise ConfigError(f"unknown combination {combination!r}; use one of {_COMBINATIONS}")
    if sign_method not in ("total", "frequency"):
        raise ConfigError(f"majority_sign_method must be 'total' or 'frequency': {sign_method!r}")
    if combination in _PRUNED:
        if density is None:
            raise ConfigError(f"combination {combination!r} needs a density in (0, 1]")
        if isinstance(density, bool) or not 0 < density <= 1:
            raise ConfigError(f"density must be in (0, 1], got {density!r}")
    elif density is not None:
        raise ConfigError(f"density applies to {_PRUNED}, not to {combination!r}")
    return "linear" if num_sources == 1 else combination


def _modules_in_order(sources: Sequence[MergeSource]) -> list[str]:
    """Targeted module paths in model order (layer, then q k v o gate up down)."""
    modules = {module for s in sources for module in s.spec.ranks}

    def order(module: str) -> tuple[int, int]:
        return int(module.split(".")[2]), _PROJECTIONS.index(module.rsplit(".", 1)[1])

    return sorted(modules, key=order)
