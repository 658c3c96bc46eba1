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
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from openledger.crypto import keccak256_hex
from openledger.exceptions import AdapterFormatError, AdapterMismatchError, ConfigError
from openledger.serve.adapters.loading import MANIFEST_FILE, WEIGHTS_FILE, AdapterSpec
from openledger.serve.adapters.merge_ops import combine_tensors
from openledger.serve.adapters.sources import ADAPTER_CONFIG_FILE

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
MERGED_MANIFEST_FORMAT = "openledger.merged_adapter/1"
_COMBINATIONS = ("linear", "cat", "ties", "dare_linear", "dare_ties")
_PRUNED = ("ties", "dare_linear", "dare_ties")
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class MergeSource:
    """One adapter going into a merge.

    Attributes:
        spec: The registered adapter.
        weight: Its coefficient.
    """

    spec: AdapterSpec
    weight: float


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
            missing density, or a non-empty ``output_dir``.
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
    kind = _check_options(combination, density, majority_sign_method, len(sources))
    folder = _output_folder(output_dir)
    base = _common_base(sources)
    tensors = {i: _read_tensors(s.spec) for i, s in enumerate(sources)}
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
            a, b = _cat(a_list, b_list, coefficients, rank_cat)
        else:
            _same_ranks(module, a_list, [s.spec.name for s in sources if module in s.spec.ranks])
            a, b = _task_arithmetic(
                kind, a_list, b_list, coefficients, density, majority_sign_method, generator
            )
        merged[f"{prefix}.lora_A.weight"], merged[f"{prefix}.lora_B.weight"] = a, b
        ranks[module] = int(a.shape[0])
    folder.mkdir(parents=True, exist_ok=True)  # NOTE: only once every check has passed
    save_file({k: v.contiguous() for k, v in merged.items()}, str(folder / WEIGHTS_FILE))
    _write_config(folder, sources, ranks)
    options = {"density": density, "seed": seed, "majority_sign_method": majority_sign_method}
    _write_manifest(folder, sources, kind, options, base)
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


def _output_folder(output_dir: str | os.PathLike[str]) -> Path:
    folder = Path(output_dir)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} exists and is not an empty folder; pick a new output_dir")
    return folder


def _read_tensors(spec: AdapterSpec) -> dict[str, torch.Tensor]:
    path = spec.folder / WEIGHTS_FILE
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is not a readable safetensors file: {exc}") from exc


def _modules_in_order(sources: Sequence[MergeSource]) -> list[str]:
    """Targeted module paths in model order (layer, then q k v o gate up down)."""
    modules = {module for s in sources for module in s.spec.ranks}

    def order(module: str) -> tuple[int, int]:
        return int(module.split(".")[2]), _PROJECTIONS.index(module.rsplit(".", 1)[1])

    return sorted(modules, key=order)


def _same_ranks(module: str, a_list: list[torch.Tensor], names: list[str]) -> None:
    ranks = [int(a.shape[0]) for a in a_list]
    if len(set(ranks)) > 1:
        found = ", ".join(f"{n}: r={r}" for n, r in zip(names, ranks, strict=True))
        raise AdapterMismatchError(
            f"linear, ties and dare merges need equal ranks; {module} has {found}. "
            "Use combination='cat' for adapters of different ranks"
        )


def _cat(
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


def _task_arithmetic(
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


def _common_base(sources: Sequence[MergeSource]) -> dict[str, Any]:
    """The base model the sources' manifests agree on (None fields when they have none)."""
    manifests = [_manifest(s.spec.folder) for s in sources]
    hashes = {m["base_model_weights_hash"] for m in manifests if m.get("base_model_weights_hash")}
    if len(hashes) > 1:
        raise AdapterMismatchError(
            f"the adapters were trained on different base weights ({sorted(hashes)}); "
            "only adapters of one base model can be merged"
        )
    names = [m["base_model"] for m in manifests if m.get("base_model")]
    config = _config(sources[0].spec.folder)
    return {
        "base_model": names[0] if names else config.get("base_model_name_or_path"),
        "base_model_weights_hash": hashes.pop() if hashes else None,
    }


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _config(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _write_config(folder: Path, sources: Sequence[MergeSource], ranks: Mapping[str, int]) -> None:
    """The first source's config with the merged rank, alpha = rank and the union of targets.

    Modules whose rank differs from the largest get ``rank_pattern``/``alpha_pattern``
    entries (scaling 1 everywhere); untargeted layers of a targeted projection start at
    zero (``init_lora_weights=True``), so PEFT loads the folder as written.
    """
    config = _config(sources[0].spec.folder)
    rank = max(ranks.values())
    odd = {module: r for module, r in ranks.items() if r != rank}
    config.update(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted({t for s in sources for t in s.spec.target_modules}),
        rank_pattern=odd,
        alpha_pattern=dict(odd),
        use_rslora=False,
        use_dora=False,
        init_lora_weights=True,
        layers_to_transform=None,
        layers_pattern=None,
        modules_to_save=None,
    )
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    (folder / ADAPTER_CONFIG_FILE).write_text(text, encoding="utf-8")


def _write_manifest(
    folder: Path,
    sources: Sequence[MergeSource],
    combination: str,
    options: Mapping[str, object],
    base: Mapping[str, Any],
) -> None:
    weights_bytes = (folder / WEIGHTS_FILE).read_bytes()
    manifest = {
        "format": MERGED_MANIFEST_FORMAT,
        "adapter_id": keccak256_hex(weights_bytes),
        **base,
        "combination": combination,
        **({k: v for k, v in options.items() if k == "seed"} if "dare" in combination else {}),
        "density": options["density"],
        "majority_sign_method": options["majority_sign_method"] if "ties" in combination else None,
        "sources": [
            {
                "name": s.spec.name,
                "adapter_id": s.spec.adapter_id,
                "weight": s.weight,
                "ranks": sorted(set(s.spec.ranks.values())),
            }
            for s in sources
        ],
        "created_at": time.time(),
        "versions": {"torch": torch.__version__},
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (folder / MANIFEST_FILE).write_text(text, encoding="utf-8")
