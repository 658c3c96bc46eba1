"""Reading a PEFT LoRA folder: validation from its header alone, then weights into slices.

:func:`inspect_adapter` (registration) reads ``adapter_config.json``, the optional
``openledger_manifest.json`` and the safetensors *header* (names, shapes), so a wrong
adapter is refused before any weight is read and thousands can be registered cheaply.
:func:`load_adapter` (first use) reads the weights and lays them out as one
:class:`~openledger.serve.ops.lora_torch.LoraWeights` per fused projection of the engine's
model, with the scaling (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA) folded into B.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from openledger.exceptions import AdapterFormatError, AdapterMismatchError
from openledger.serve.adapters.sources import ADAPTER_CONFIG_FILE
from openledger.serve.models.config import ModelConfig
from openledger.serve.ops.lora_torch import LoraSlice, LoraWeights

__all__ = [
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "AdapterSpec",
    "LoadedAdapter",
    "inspect_adapter",
    "load_adapter",
]

WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "openledger_manifest.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# checkpoint projection -> (the engine's fused projection, slice index)
_SLICES = {
    "q_proj": ("self_attn.qkv_proj", 0),
    "k_proj": ("self_attn.qkv_proj", 1),
    "v_proj": ("self_attn.qkv_proj", 2),
    "o_proj": ("self_attn.o_proj", 0),
    "gate_proj": ("mlp.gate_up_proj", 0),
    "up_proj": ("mlp.gate_up_proj", 1),
    "down_proj": ("mlp.down_proj", 0),
}
_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$"
)


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """A registered adapter: validated, weights still on disk.

    Attributes:
        name: The name it was registered under.
        folder: Its local folder.
        target_modules: Checkpoint projections it updates (``q_proj``, ``down_proj`` ...).
        ranks: Rank per targeted module path (``model.layers.0.self_attn.q_proj``).
        scalings: Scaling per targeted module path.
        adapter_id: The manifest's adapter id, None without a manifest.
        num_file_bytes: Size of the weights file.
    """

    name: str
    folder: Path
    target_modules: frozenset[str]
    ranks: Mapping[str, int]
    scalings: Mapping[str, float]
    adapter_id: str | None
    num_file_bytes: int


@dataclass(frozen=True, slots=True)
class LoadedAdapter:
    """An adapter in host memory, laid out for the engine's fused projections.

    Attributes:
        spec: What was registered.
        modules: Weights by the engine's module name (``layers.0.self_attn.qkv_proj``).
        num_bytes: Bytes the tensors hold.
    """

    spec: AdapterSpec
    modules: Mapping[str, LoraWeights]
    num_bytes: int


def projection_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` of each checkpoint projection of ``config``."""
    q_size = config.num_heads * config.head_dim
    kv_size = config.num_kv_heads * config.head_dim
    hidden, width = config.hidden_size, config.intermediate_size
    return {
        "q_proj": (hidden, q_size),
        "k_proj": (hidden, kv_size),
        "v_proj": (hidden, kv_size),
        "o_proj": (q_size, hidden),
        "gate_proj": (hidden, width),
        "up_proj": (hidden, width),
        "down_proj": (width, hidden),
    }


def inspect_adapter(
    name: str, folder: Path, config: ModelConfig, base_weights_hash: str | None = None
) -> AdapterSpec:
    """Validate an adapter folder against the base model without reading its weights.

    Args:
        name: The name to register it under.
        folder: A PEFT LoRA folder.
        config: The engine's model.
        base_weights_hash: The base model's weights hash (as in the manifest), or None to
            skip that comparison.

    Raises:
        AdapterFormatError: No usable config, pickle weights, unreadable safetensors, or
            a PEFT feature the engine does not serve (DoRA, biases, modules_to_save).
        AdapterMismatchError: The manifest names other base weights, or a tensor's
            name or shape does not fit the base model.
    """
    peft_config = _read_config(folder)
    adapter_id = _check_manifest(folder, base_weights_hash)
    weights = _weights_file(folder)
    shapes = _header_shapes(weights)
    ranks = _check_shapes(shapes, config, weights)
    alpha = float(peft_config.get("lora_alpha", 8))
    patterns = dict(peft_config.get("alpha_pattern") or {})
    rslora = bool(peft_config.get("use_rslora", False))
    scalings = {
        module: _alpha_for(module, alpha, patterns) / (math.sqrt(r) if rslora else r)
        for module, r in ranks.items()
    }
    targets = frozenset(module.rsplit(".", 1)[1] for module in ranks)
    size = weights.stat().st_size
    return AdapterSpec(name, folder, targets, ranks, scalings, adapter_id, size)


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{folder}: unreadable {ADAPTER_CONFIG_FILE}: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{folder} is not a PEFT LoRA adapter (peft_type must be LORA)")
    refused = {
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") not in ("none", None),
        "modules_to_save": bool(config.get("modules_to_save")),
    }
    for field_name, present in refused.items():
        if present:
            raise AdapterFormatError(
                f"{folder}: adapters with {field_name} are not served; train a plain LoRA"
            )
    return config


def _check_manifest(folder: Path, base_weights_hash: str | None) -> str | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is unreadable: {exc}") from exc
    declared = manifest.get("base_model_weights_hash")
    if base_weights_hash is not None and declared is not None and declared != base_weights_hash:
        raise AdapterMismatchError(
            f"{folder} was trained on base model {manifest.get('base_model')!r} with weights "
            f"{declared}, but this engine serves weights {base_weights_hash}"
        )
    adapter_id = manifest.get("adapter_id")
    return str(adapter_id) if adapter_id is not None else None


def _weights_file(folder: Path) -> Path:
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        return weights
    pickles = [p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
        raise AdapterFormatError(
            f"{folder} holds pickle weights ({', '.join(sorted(pickles))}); they can run code "
            f"when loaded and are refused. Save the adapter with safetensors ({WEIGHTS_FILE})."
        )
    raise AdapterFormatError(f"{folder} has no {WEIGHTS_FILE}")


def _header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{weights} is not a readable safetensors file: {exc}") from exc


def _check_shapes(
    shapes: Mapping[str, tuple[int, ...]], config: ModelConfig, weights: Path
) -> dict[str, int]:
    expected = projection_shapes(config)
    ranks: dict[str, int] = {}
    for key, shape in shapes.items():
        match = _KEY.match(key)
        if match is None or match.group(2) not in expected:
            raise AdapterMismatchError(f"{weights}: tensor {key!r} targets no served projection")
        layer, proj, part = int(match.group(1)), match.group(2), match.group(3)
        if layer >= config.num_layers:
            raise AdapterMismatchError(f"{weights}: {key!r} is past the model's layers")
        in_features, out_features = expected[proj]
        rank = shape[0] if part == "A" else shape[-1]
        want = (rank, in_features) if part == "A" else (out_features, rank)
        if shape != want:
            raise AdapterMismatchError(
                f"{weights}: {key} has shape {shape}, the base model needs {want}"
            )
        module = f"model.layers.{layer}.{_SECTION[proj]}.{proj}"
        if ranks.setdefault(module, rank) != rank:
            raise AdapterMismatchError(f"{weights}: lora_A and lora_B ranks differ for {module}")
    _check_pairs(shapes, ranks, weights)
    return ranks


_SECTION = {proj: fused.split(".")[0] for proj, (fused, _) in _SLICES.items()}


def _check_pairs(shapes: Mapping[str, object], ranks: Mapping[str, int], weights: Path) -> None:
    if not ranks:
        raise AdapterMismatchError(f"{weights} holds no LoRA tensors")
    for module in ranks:
        for part in "AB":
            if f"base_model.model.{module}.lora_{part}.weight" not in shapes:
                raise AdapterMismatchError(f"{weights}: {module} has no lora_{part}")


def _alpha_for(module: str, alpha: float, patterns: Mapping[str, float]) -> float:
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return float(value)
    return alpha


def load_adapter(spec: AdapterSpec, config: ModelConfig, dtype: torch.dtype) -> LoadedAdapter:
    """Read a registered adapter's weights into host memory, laid out per fused projection.

    Raises:
        AdapterFormatError: The weights file changed or became unreadable since registration.
    """
    path = spec.folder / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    shapes = projection_shapes(config)
    parts: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, scaling in spec.scalings.items():
        prefix = f"base_model.model.{module}"
        try:
            a, b = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
        except KeyError as exc:
            raise AdapterFormatError(f"{path} changed since registration: {exc}") from exc
        layer, proj = module.split(".")[2], module.rsplit(".", 1)[1]
        fused, index = _SLICES[proj]
        parts.setdefault(f"layers.{layer}.{fused}", {})[index] = (a, b.float() * scaling)
    modules = {
        name: _fuse(slices, name.rsplit(".", 1)[1], shapes, dtype) for name, slices in parts.items()
    }
    return LoadedAdapter(spec, modules, sum(w.num_bytes for w in modules.values()))


_FUSED_SLICES = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}


def _fuse(
    slices: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    fused: str,
    shapes: Mapping[str, tuple[int, int]],
    dtype: torch.dtype,
) -> LoraWeights:
    a_parts: list[torch.Tensor] = []
    out: list[LoraSlice] = []
    rank_at = col_at = 0
    for index, proj in enumerate(_FUSED_SLICES[fused]):
        width = shapes[proj][1]
        if index in slices:
            a, b = slices[index]
            a_parts.append(a.to(dtype))
            rank = a.shape[0]
            # NOTE: B is stored transposed ([rank, cols] in memory, a [cols, rank] view), the
            # layout the CPU kernel streams; the torch paths read the view.
            b_view = b.to(dtype).T.contiguous().T
            out.append(LoraSlice(rank_at, rank_at + rank, col_at, col_at + width, b_view))
            rank_at += rank
        col_at += width
    return LoraWeights(torch.cat(a_parts).contiguous(), tuple(out))
