"""Reading a PEFT LoRA folder: validation at registration, then weights into slices.

:func:`inspect_adapter` (registration) reads ``adapter_config.json`` (validated by
:mod:`.lora_config`), the optional ``openledger_manifest.json`` and the safetensors
*header* (names, shapes; checked by :mod:`.checkpoint`), and hashes the weights file:
the adapter id is keccak256 of ``adapter_model.safetensors`` (as ``openledger.train``
exports it), so a manifest whose ``adapter_id`` is not the hash of its weights is refused.
:func:`load_adapter` (first use) reads the weights once, checks they still hash to what
was registered and still fit, and lays them out as one
:class:`~openledger.serve.ops.lora_torch.LoraWeights` per fused projection of the engine's
model, with the scaling (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA) folded into B
(in the CPU kernel's layout, :func:`~openledger.serve.ops.lora_cpu.kernel_layout`).
What is served is therefore exactly what was validated, and the id in a usage receipt
is the id of the weights served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from openledger.exceptions import AdapterFormatError
from openledger.serve.adapters.checkpoint import (
    MANIFEST_FILE,
    PROJECTIONS,
    WEIGHTS_FILE,
    bytes_keccak,
    check_manifest,
    check_shapes,
    file_keccak,
    header_shapes,
    projection_shapes,
    weights_file,
)
from openledger.serve.adapters.lora_config import read_lora_options
from openledger.serve.models.config import ModelConfig
from openledger.serve.ops.lora_cpu import kernel_layout
from openledger.serve.ops.lora_torch import LoraSlice, LoraWeights

__all__ = [
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "AdapterSpec",
    "LoadedAdapter",
    "inspect_adapter",
    "load_adapter",
    "projection_shapes",
]


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """A registered adapter: validated, weights still on disk.

    Attributes:
        name: The name it was registered under.
        folder: Its local folder.
        target_modules: Checkpoint projections it updates (``q_proj``, ``down_proj`` ...).
        ranks: Rank per targeted module path (``model.layers.0.self_attn.q_proj``).
        scalings: Scaling per targeted module path.
        adapter_id: The manifest's adapter id, checked to be ``weights_hash``; None
            without a manifest.
        num_file_bytes: Size of the weights file.
        weights_hash: keccak256 of the weights file at registration (0x-hex); loading
            refuses a file that no longer hashes to it.
    """

    name: str
    folder: Path
    target_modules: frozenset[str]
    ranks: Mapping[str, int]
    scalings: Mapping[str, float]
    adapter_id: str | None
    num_file_bytes: int
    weights_hash: str


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
        AdapterFormatError: No usable config, pickle weights, unreadable safetensors, a
            config field out of range (see :mod:`.lora_config`), a manifest whose
            ``adapter_id`` is not the hash of the weights, or a PEFT feature the engine
            does not serve (DoRA, biases, modules_to_save).
        AdapterMismatchError: The manifest names other base weights, or a tensor's
            name or shape does not fit the base model.
    """
    options = read_lora_options(folder)
    manifest_id = check_manifest(folder, base_weights_hash)
    weights = weights_file(folder)
    shapes = header_shapes(weights)
    ranks = check_shapes(shapes, config, weights)
    digest, size = file_keccak(weights)
    if manifest_id is not None and manifest_id.lower() != digest:
        raise AdapterFormatError(
            f"{folder / MANIFEST_FILE}: adapter_id {manifest_id} is not the keccak256 of "
            f"{WEIGHTS_FILE} ({digest}); the weights were changed or the manifest belongs "
            "to another adapter. Re-export the adapter, or remove the manifest."
        )
    scalings = {module: options.scaling(module, r) for module, r in ranks.items()}
    targets = frozenset(module.rsplit(".", 1)[1] for module in ranks)
    adapter_id = None if manifest_id is None else digest
    return AdapterSpec(name, folder, targets, ranks, scalings, adapter_id, size, digest)


def load_adapter(spec: AdapterSpec, config: ModelConfig, dtype: torch.dtype) -> LoadedAdapter:
    """Read a registered adapter's weights into host memory, laid out per fused projection.

    Raises:
        AdapterFormatError: The weights file changed or became unreadable since registration.
    """
    tensors = _read_registered(spec, config)
    path = spec.folder / WEIGHTS_FILE
    shapes = projection_shapes(config)
    parts: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, scaling in spec.scalings.items():
        prefix = f"base_model.model.{module}"
        try:
            a, b = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
        except KeyError as exc:
            raise AdapterFormatError(f"{path} changed since registration: {exc}") from exc
        layer, proj = module.split(".")[2], module.rsplit(".", 1)[1]
        fused, index = PROJECTIONS[proj]
        parts.setdefault(f"layers.{layer}.{fused}", {})[index] = (a, b.float() * scaling)
    modules = {
        name: _fuse(slices, name.rsplit(".", 1)[1], shapes, dtype) for name, slices in parts.items()
    }
    return LoadedAdapter(spec, modules, sum(w.num_bytes for w in modules.values()))


def _read_registered(spec: AdapterSpec, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights file's tensors, read once and checked against the registration."""
    path = spec.folder / WEIGHTS_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AdapterFormatError(f"{path} is unreadable: {exc}") from exc
    if bytes_keccak(data) != spec.weights_hash:
        raise AdapterFormatError(
            f"{path} changed since adapter {spec.name!r} was registered (its keccak256 is no "
            f"longer {spec.weights_hash}); register it again"
        )
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    ranks = check_shapes({k: tuple(t.shape) for k, t in tensors.items()}, config, path)
    if ranks != dict(spec.ranks):  # NOTE: the same bytes, so only another base model differs
        raise AdapterFormatError(f"{path} no longer fits what was registered")
    return tensors


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
            out.append(LoraSlice(rank_at, rank_at + rank, col_at, col_at + width, b.to(dtype)))
            rank_at += rank
        col_at += width
    # NOTE: laid out as the CPU kernel reads them (A and each B^T in one buffer), which the
    # torch paths read through views: a slot takes them without another copy.
    return kernel_layout(LoraWeights(torch.cat(a_parts), tuple(out)))
