"""Reading a PEFT LoRA folder: validation at registration, then weights into slices.

:func:`inspect_adapter` (registration) reads ``adapter_config.json`` (validated by
:mod:`.lora_config`), the optional ``openledger_manifest.json`` and the safetensors
*header* (names, shapes), and hashes the weights file: the adapter id is keccak256 of
``adapter_model.safetensors`` (as ``openledger.train`` exports it), so a manifest whose
``adapter_id`` is not the hash of its weights is refused.
:func:`load_adapter` (first use) reads the weights once, checks they still hash to what
was registered and still fit, and lays them out as one
:class:`~openledger.serve.ops.lora_torch.LoraWeights` per fused projection of the engine's
model, with the scaling (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA) folded into B.
What is served is therefore exactly what was validated, and the id in a usage receipt
is the id of the weights served.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors

from openledger.exceptions import AdapterFormatError, AdapterMismatchError
from openledger.serve.adapters.lora_config import check_rank, read_lora_options
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
        AdapterFormatError: No usable config, pickle weights, unreadable safetensors, a
            config field out of range (see :mod:`.lora_config`), a manifest whose
            ``adapter_id`` is not the hash of the weights, or a PEFT feature the engine
            does not serve (DoRA, biases, modules_to_save).
        AdapterMismatchError: The manifest names other base weights, or a tensor's
            name or shape does not fit the base model.
    """
    options = read_lora_options(folder)
    manifest_id = _check_manifest(folder, base_weights_hash)
    weights = _weights_file(folder)
    shapes = _header_shapes(weights)
    ranks = _check_shapes(shapes, config, weights)
    digest, size = _file_keccak(weights)
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


def _file_keccak(path: Path) -> tuple[str, int]:
    """keccak256 of a file (0x-hex) and its size, streamed."""
    from Crypto.Hash import keccak

    digest, size = keccak.new(digest_bits=256), 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise AdapterFormatError(f"{path} is unreadable: {exc}") from exc
    return "0x" + digest.hexdigest(), size


def _bytes_keccak(data: bytes) -> str:
    from Crypto.Hash import keccak

    return "0x" + keccak.new(digest_bits=256, data=data).hexdigest()


def _check_manifest(folder: Path, base_weights_hash: str | None) -> str | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise AdapterFormatError(f"{path} must hold a JSON object")
    declared = manifest.get("base_model_weights_hash")
    if base_weights_hash is not None and declared is not None and declared != base_weights_hash:
        raise AdapterMismatchError(
            f"{folder} was trained on base model {manifest.get('base_model')!r} with weights "
            f"{declared}, but this engine serves weights {base_weights_hash}"
        )
    adapter_id = manifest.get("adapter_id")
    if adapter_id is not None and not isinstance(adapter_id, str):
        raise AdapterFormatError(f"{path}: adapter_id must be a 0x-hex string, got {adapter_id!r}")
    return adapter_id


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
        rank = check_rank(shape[0] if part == "A" else shape[-1], f"{weights}: rank of {key}")
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
        fused, index = _SLICES[proj]
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
    if _bytes_keccak(data) != spec.weights_hash:
        raise AdapterFormatError(
            f"{path} changed since adapter {spec.name!r} was registered (its keccak256 is no "
            f"longer {spec.weights_hash}); register it again"
        )
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is not a readable safetensors file: {exc}") from exc
    ranks = _check_shapes({k: tuple(t.shape) for k, t in tensors.items()}, config, path)
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
            # NOTE: B is stored transposed ([rank, cols] in memory, a [cols, rank] view), the
            # layout the CPU kernel streams; the torch paths read the view.
            b_view = b.to(dtype).T.contiguous().T
            out.append(LoraSlice(rank_at, rank_at + rank, col_at, col_at + width, b_view))
            rank_at += rank
        col_at += width
    return LoraWeights(torch.cat(a_parts).contiguous(), tuple(out))
