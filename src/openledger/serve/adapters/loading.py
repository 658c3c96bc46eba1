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

A DoRA adapter's factors ``g = m / ||W + s B A||_row`` need the base weights: the store
hands :func:`load_adapter` a :data:`BaseWeights` lookup, ``g`` is folded into ``B`` and kept
as :class:`~openledger.serve.ops.lora_dora.DoraFactors` (see
:mod:`~openledger.serve.ops.lora_dora`).
``modules_to_save`` copies (``lm_head``, ``embed_tokens``) are kept whole in
:attr:`LoadedAdapter.heads`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from openledger.exceptions import AdapterFormatError
from openledger.serve.adapters.checkpoint import (
    MANIFEST_FILE,
    PROJECTIONS,
    SAVED_KEYS,
    WEIGHTS_FILE,
    WHOLE,
    AdapterTensors,
    bytes_keccak,
    check_manifest,
    check_tensors,
    file_keccak,
    header_shapes,
    projection_shapes,
    weights_file,
)
from openledger.serve.adapters.lora_config import LoraOptions, read_lora_options
from openledger.serve.models.config import ModelConfig
from openledger.serve.ops.lora_cpu import kernel_layout
from openledger.serve.ops.lora_dora import DoraFactors, dora_update
from openledger.serve.ops.lora_torch import LoraSlice, LoraWeights

__all__ = [
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "AdapterSpec",
    "BaseWeights",
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
        use_dora: A DoRA adapter (a magnitude vector per targeted module).
        saved_modules: Its ``modules_to_save`` copies (``lm_head``, ``embed_tokens``).
    """

    name: str
    folder: Path
    target_modules: frozenset[str]
    ranks: Mapping[str, int]
    scalings: Mapping[str, float]
    adapter_id: str | None
    num_file_bytes: int
    weights_hash: str
    use_dora: bool = False
    saved_modules: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LoadedAdapter:
    """An adapter in host memory, laid out for the engine's fused projections.

    Attributes:
        spec: What was registered.
        modules: Weights by the engine's module name (``layers.0.self_attn.qkv_proj``).
        num_bytes: Bytes the tensors hold.
        heads: ``modules_to_save`` copies by module (``lm_head``, ``embed_tokens``).
    """

    spec: AdapterSpec
    modules: Mapping[str, LoraWeights]
    num_bytes: int
    heads: Mapping[str, torch.Tensor]


BaseWeights = Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]
"""The base model's ``(weight, bias)`` of a fused projection by engine module name
(``layers.0.self_attn.qkv_proj``): what DoRA's weight norm is taken of."""


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
            does not serve (biases, modules_to_save other than lm_head/embed_tokens).
        AdapterMismatchError: The manifest names other base weights, or a tensor's
            name or shape does not fit the base model.
    """
    options = read_lora_options(folder)
    manifest_id = check_manifest(folder, base_weights_hash)
    weights = weights_file(folder)
    shapes = header_shapes(weights)
    found = _check(shapes, config, weights, options)
    ranks = found.ranks
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
    return AdapterSpec(
        name,
        folder,
        targets,
        ranks,
        scalings,
        adapter_id,
        size,
        digest,
        use_dora=options.use_dora,
        saved_modules=found.saved,
    )


def _check(
    shapes: Mapping[str, tuple[int, ...]], config: ModelConfig, weights: Path, options: LoraOptions
) -> AdapterTensors:
    return check_tensors(
        shapes,
        config,
        weights,
        dora=options.use_dora,
        saved=options.modules_to_save,
        tied=options.ensure_weight_tying,
    )


_Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def load_adapter(
    spec: AdapterSpec,
    config: ModelConfig,
    dtype: torch.dtype,
    base_weights: BaseWeights | None = None,
) -> LoadedAdapter:
    """Read a registered adapter's weights into host memory, laid out per fused projection.

    Args:
        spec: What was registered.
        config: The engine's model.
        dtype: Dtype the weights are served in.
        base_weights: The base projections (needed by DoRA adapters only).

    Raises:
        AdapterFormatError: The weights file changed or became unreadable since
            registration, or a DoRA adapter without ``base_weights``.
    """
    tensors = _read_registered(spec, config)
    path = spec.folder / WEIGHTS_FILE
    if spec.use_dora and base_weights is None:
        raise AdapterFormatError(
            f"adapter {spec.name!r} is a DoRA adapter: loading it needs the base weights"
        )
    shapes = projection_shapes(config)
    parts: dict[str, dict[int, _Part]] = {}
    for module, scaling in spec.scalings.items():
        prefix = f"base_model.model.{module}"
        try:
            a, b = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
            magnitude = tensors[f"{prefix}.lora_magnitude_vector"] if spec.use_dora else None
        except KeyError as exc:
            raise AdapterFormatError(f"{path} changed since registration: {exc}") from exc
        layer, proj = module.split(".")[2], module.rsplit(".", 1)[1]
        fused, index = PROJECTIONS[proj]
        parts.setdefault(f"layers.{layer}.{fused}", {})[index] = (a, b.float() * scaling, magnitude)
    modules = {
        name: _fuse(slices, name, shapes, dtype, base_weights) for name, slices in parts.items()
    }
    heads = {module: tensors[key].to(dtype) for key, module in SAVED_KEYS.items() if key in tensors}
    num_bytes = sum(w.num_bytes for w in modules.values()) + sum(
        t.numel() * t.element_size() for t in heads.values()
    )
    return LoadedAdapter(spec, modules, num_bytes, heads)


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
    found = check_tensors(
        {k: tuple(t.shape) for k, t in tensors.items()},
        config,
        path,
        dora=spec.use_dora,
        saved=spec.saved_modules,
        tied=True,  # NOTE: checked at registration; the same bytes hold the same copies
    )
    # NOTE: the same bytes, so only another base model differs
    if found.ranks != dict(spec.ranks) or found.saved != spec.saved_modules:
        raise AdapterFormatError(f"{path} no longer fits what was registered")
    return tensors


_FUSED_SLICES = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}


def _fuse(
    slices: Mapping[int, _Part],
    name: str,
    shapes: Mapping[str, tuple[int, int]],
    dtype: torch.dtype,
    base_weights: BaseWeights | None,
) -> LoraWeights:
    a_parts: list[torch.Tensor] = []
    out: list[LoraSlice] = []
    rank_at = col_at = 0
    fused = name.rsplit(".", 1)[1]
    if WHOLE in slices:  # NOTE: a checkpoint with this module fused (Phi-3): one slice
        slices = {0: slices[WHOLE]}
        widths = [shapes[fused][1]]
    else:
        widths = [shapes[proj][1] for proj in _FUSED_SLICES[fused]]
    dora = _DoraParts(name, sum(widths), base_weights)
    for index, width in enumerate(widths):
        if index in slices:
            a, b, magnitude = slices[index]
            if magnitude is not None:
                b = dora.slice(col_at, col_at + width, a, b, magnitude)
            a_parts.append(a.to(dtype))
            rank = a.shape[0]
            out.append(LoraSlice(rank_at, rank_at + rank, col_at, col_at + width, b.to(dtype)))
            rank_at += rank
        col_at += width
    # NOTE: laid out as the CPU kernel reads them (A and each B^T in one buffer), which the
    # torch paths read through views: a slot takes them without another copy.
    return kernel_layout(LoraWeights(torch.cat(a_parts), tuple(out), dora.factors(dtype)))


class _DoraParts:
    """The DoRA factors of one fused projection, slice by slice (1 and 0 elsewhere)."""

    def __init__(self, name: str, width: int, base_weights: BaseWeights | None) -> None:
        self.name, self.width, self.base_weights = name, width, base_weights
        self.scale: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def slice(
        self, start: int, end: int, a: torch.Tensor, b: torch.Tensor, magnitude: torch.Tensor
    ) -> torch.Tensor:
        """``g s B`` of the slice ``[start, end)``; records its ``g``."""
        assert self.base_weights is not None  # NOTE: checked by load_adapter
        weight, bias = self.base_weights(self.name)
        if self.scale is None:
            self.scale = torch.ones(self.width)
            self.bias = None if bias is None else bias.detach().float().cpu()
        rows = weight.detach()[start:end].to("cpu", torch.float32)
        g, scaled = dora_update(rows, a, b, magnitude)
        self.scale[start:end] = g
        return scaled

    def factors(self, dtype: torch.dtype) -> DoraFactors | None:
        if self.scale is None:
            return None
        shift = None if self.bias is None else ((1.0 - self.scale) * self.bias).to(dtype)
        return DoraFactors(self.scale.to(dtype), shift)
