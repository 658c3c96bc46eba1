"""The files of a PEFT LoRA folder, checked against the base model.

The weights must be ``adapter_model.safetensors`` (pickle files are refused: loading them
can run code); every tensor must be the ``lora_A`` or ``lora_B`` of a served projection
(:data:`PROJECTIONS`) of an existing layer, with the base model's shapes and one rank per
module, a DoRA ``lora_magnitude_vector`` of such a module (``[out_features]``, only in a
DoRA adapter, and then one per module), or a ``modules_to_save`` copy of ``lm_head`` or
``embed_tokens`` (``[vocab, hidden]``, only when the config lists it);
``openledger_manifest.json``, when present, must name the served base weights.
Files are hashed with keccak256, as ``openledger.train`` exports adapter ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from openledger.exceptions import AdapterFormatError, AdapterMismatchError
from openledger.serve.adapters.lora_config import check_rank
from openledger.serve.models.config import ModelConfig

__all__ = [
    "FUSED_PROJECTIONS",
    "MANIFEST_FILE",
    "PROJECTIONS",
    "WEIGHTS_FILE",
    "WHOLE",
    "AdapterTensors",
    "bytes_keccak",
    "check_manifest",
    "check_shapes",
    "check_tensors",
    "file_keccak",
    "header_shapes",
    "projection_shapes",
    "weights_file",
]

WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "openledger_manifest.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
WHOLE = -1
"""The slice index of a fused checkpoint projection: every output of the engine's module."""
PROJECTIONS: dict[str, tuple[str, int]] = {
    "q_proj": ("self_attn.qkv_proj", 0),
    "k_proj": ("self_attn.qkv_proj", 1),
    "v_proj": ("self_attn.qkv_proj", 2),
    "o_proj": ("self_attn.o_proj", 0),
    "gate_proj": ("mlp.gate_up_proj", 0),
    "up_proj": ("mlp.gate_up_proj", 1),
    "down_proj": ("mlp.down_proj", 0),
    "qkv_proj": ("self_attn.qkv_proj", WHOLE),
    "gate_up_proj": ("mlp.gate_up_proj", WHOLE),
}
"""Each checkpoint projection's fused projection in the engine's model, and its slice
(:data:`WHOLE`: all of it, for checkpoints that store q|k|v and gate|up fused, as Phi-3's;
a PEFT adapter of such a model targets the fused modules)."""
FUSED_PROJECTIONS = ("qkv_proj", "gate_up_proj")
"""Checkpoint projections only models with ``ModelConfig.fused_checkpoint`` have."""
_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$"
)
_MAGNITUDE = re.compile(
    r"^base_model\.model\.(model\.layers\.\d+\.(?:self_attn|mlp)\.\w+)\.lora_magnitude_vector$"
)
SAVED_KEYS = {
    "base_model.model.lm_head.weight": "lm_head",
    "base_model.model.model.embed_tokens.weight": "embed_tokens",
}
"""The keys PEFT writes ``modules_to_save`` copies under, and the module each copies."""


def projection_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` of each checkpoint projection of ``config``."""
    q_size = config.num_heads * config.head_dim
    kv_size = config.num_kv_heads * config.head_dim
    hidden, width = config.hidden_size, config.intermediate_size
    shapes = {
        "q_proj": (hidden, q_size),
        "k_proj": (hidden, kv_size),
        "v_proj": (hidden, kv_size),
        "o_proj": (q_size, hidden),
        "gate_proj": (hidden, width),
        "up_proj": (hidden, width),
        "down_proj": (width, hidden),
    }
    if getattr(config, "fused_checkpoint", False):
        for separate in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
            del shapes[separate]
        shapes["qkv_proj"] = (hidden, q_size + 2 * kv_size)
        shapes["gate_up_proj"] = (hidden, 2 * width)
    return shapes


def file_keccak(path: Path) -> tuple[str, int]:
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


def bytes_keccak(data: bytes) -> str:
    """keccak256 of ``data`` (0x-hex)."""
    from Crypto.Hash import keccak

    return "0x" + keccak.new(digest_bits=256, data=data).hexdigest()


def check_manifest(folder: Path, base_weights_hash: str | None) -> str | None:
    """The manifest's ``adapter_id`` (None without a manifest or an id).

    Raises:
        AdapterFormatError: An unreadable manifest or a malformed id.
        AdapterMismatchError: It names other base weights than ``base_weights_hash``.
    """
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


def weights_file(folder: Path) -> Path:
    """The folder's safetensors weights.

    Raises:
        AdapterFormatError: Missing, or pickle weights instead.
    """
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


def header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from the safetensors header (the weights are not read).

    Raises:
        AdapterFormatError: Not a readable safetensors file.
    """
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{weights} is not a readable safetensors file: {exc}") from exc


@dataclass(frozen=True, slots=True)
class AdapterTensors:
    """What an adapter's weights file holds, checked against the base model.

    Attributes:
        ranks: Each targeted module's rank (``model.layers.0.self_attn.q_proj``).
        magnitudes: The modules with a DoRA magnitude vector (all of them in a DoRA
            adapter).
        saved: The ``modules_to_save`` copies present (``lm_head``, ``embed_tokens``).
    """

    ranks: dict[str, int]
    magnitudes: frozenset[str]
    saved: frozenset[str]


def check_tensors(
    shapes: Mapping[str, tuple[int, ...]],
    config: ModelConfig,
    weights: Path,
    *,
    dora: bool,
    saved: frozenset[str],
    tied: bool = False,
) -> AdapterTensors:
    """Check every tensor of a weights file against the base model and the adapter's
    config (``dora``: ``use_dora``; ``saved``: the modules ``modules_to_save`` names;
    ``tied``: ``ensure_weight_tying``, under which PEFT saves both copies of a tied pair).

    Raises:
        AdapterMismatchError: A tensor that fits no served module (see the module
            docstring) or the base model's shapes, a DoRA module without its magnitude, or
            a listed ``modules_to_save`` copy that is missing.
        AdapterFormatError: A rank out of range.
    """
    lora: dict[str, tuple[int, ...]] = {}
    magnitudes: dict[str, tuple[int, ...]] = {}
    copies: set[str] = set()
    allowed = set(SAVED_KEYS.values()) if saved and tied else saved
    expected = projection_shapes(config)
    for key, shape in shapes.items():
        found = _MAGNITUDE.match(key)
        if dora and found is not None:
            magnitudes[found.group(1)] = shape
        elif key in SAVED_KEYS and SAVED_KEYS[key] in allowed:
            want = (config.vocab_size, config.hidden_size)
            if shape != want:
                raise AdapterMismatchError(
                    f"{weights}: {key} has shape {shape}, the base model needs {want}"
                )
            copies.add(SAVED_KEYS[key])
        else:
            lora[key] = shape
    ranks = check_shapes(lora, config, weights)
    if dora:
        for module in ranks.keys() | magnitudes.keys():
            if module not in ranks:
                raise AdapterMismatchError(f"{weights}: {module} has a magnitude but no LoRA")
            rows = (expected[module.rsplit(".", 1)[1]][1],)
            if magnitudes.get(module) != rows:
                raise AdapterMismatchError(
                    f"{weights}: {module}.lora_magnitude_vector has shape "
                    f"{magnitudes.get(module)}, a DoRA adapter needs {rows}"
                )
    if not saved <= copies:
        raise AdapterMismatchError(
            f"{weights}: modules_to_save lists {sorted(saved)} but the file holds "
            f"copies of {sorted(copies)}"
        )
    return AdapterTensors(ranks, frozenset(magnitudes), frozenset(copies))


def check_shapes(
    shapes: Mapping[str, tuple[int, ...]], config: ModelConfig, weights: Path
) -> dict[str, int]:
    """Each targeted module's rank (``model.layers.0.self_attn.q_proj``), once every tensor
    is checked against the base model.

    Raises:
        AdapterMismatchError: A tensor for no served projection or layer, a shape that does
            not fit, ranks that differ, or a module without both of its tensors.
        AdapterFormatError: A rank out of range.
    """
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


_SECTION = {proj: fused.split(".")[0] for proj, (fused, _) in PROJECTIONS.items()}


def _check_pairs(shapes: Mapping[str, object], ranks: Mapping[str, int], weights: Path) -> None:
    if not ranks:
        raise AdapterMismatchError(f"{weights} holds no LoRA tensors")
    for module in ranks:
        for part in "AB":
            if f"base_model.model.{module}.lora_{part}.weight" not in shapes:
                raise AdapterMismatchError(f"{weights}: {module} has no lora_{part}")
