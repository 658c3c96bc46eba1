"""Load a transformers safetensors checkpoint into the engine's decoder.

Separate q/k/v and gate/up projections go to their slices of our fused projections;
Phi-3's fused ``qkv_proj`` and ``gate_up_proj`` tensors are split along their rows into
the same slices (q, k, v; gate, up), so every family ends up in one layout.

With a quantisation (``EngineConfig.quantization``) each projection is quantised as soon
as its last slice is loaded, and its full-precision weight freed: projections are
allocated one at a time, when their first slice arrives, so loading never holds the whole
model in full precision (the embedding and, after loading, the LM head stay as they are
until the head is quantised).

A tensor-parallel rank's model (built from a
:class:`~openledger.serve.parallel.sharding.ShardedModelConfig`) gets its share of each
tensor: the rows of each q/k/v and gate/up slice and of the LM head, the input columns
of o and down; the bias of o and down on rank 0 only (it is added once, before their
outputs are summed); everything else whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from openledger.exceptions import ModelNotAvailableError, UnsupportedModelError
from openledger.serve.layers.attention import AttentionBackend
from openledger.serve.layers.linear import Linear
from openledger.serve.layers.quant import Compute, Quantization
from openledger.serve.layers.rotary import RotaryEmbedding
from openledger.serve.models.config import ModelConfig
from openledger.serve.models.decoder import DecoderForCausalLM
from openledger.serve.parallel.sharding import COLUMN_PARALLEL, shard_rows, tensor_parallel_of

__all__ = ["build_model", "checkpoint_tensors"]

# checkpoint projection -> (our fused projection, slice index; -1: all slices, split)
_FUSED = {
    "qkv_proj": ("qkv_proj", -1),
    "gate_up_proj": ("gate_up_proj", -1),
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "o_proj": ("o_proj", 0),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
    "down_proj": ("down_proj", 0),
}
_PROJ = re.compile(r"^(model\.layers\.\d+\.(?:self_attn|mlp))\.(\w+_proj)\.(weight|bias)$")
_SKIPPED = re.compile(r"rotary_emb\.(?:\w+_)?inv_freq$")


def checkpoint_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the folder's safetensors files (sharded or not), by name.

    Raises:
        ModelNotAvailableError: The folder holds no safetensors weights.
    """
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
    if not files:
        raise ModelNotAvailableError(f"no safetensors weights in {folder}")
    for name in files:
        with safe_open(str(folder / name), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield key, handle.get_tensor(key)


def build_model(
    folder: Path,
    config: ModelConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    backend: AttentionBackend,
    quantization: Quantization | None = None,
    quantized_compute: Compute = "float32",
) -> DecoderForCausalLM:
    """Build the model for ``config`` and fill it from the folder's checkpoint; with a
    ``quantization``, quantise every projection while loading and the LM head after (int8
    computing in ``quantized_compute`` on CPU; see :mod:`~openledger.serve.layers.quant`).

    Raises:
        UnsupportedModelError: A checkpoint tensor has no place in the model, a model
            weight is missing from the checkpoint, or a projection's slice comes twice.
        ValueError: An unknown quantisation, or a weight that cannot be quantised.
    """
    with torch.device("meta"):
        model = DecoderForCausalLM(config, max_positions, backend)
    quantizer = None
    if quantization is None:
        model.to_empty(device=device)
    else:
        quantizer = _Quantizer(quantization, quantized_compute, device, dtype)
        quantizer.allocate_all_but_projections(model)
    model.to(dtype)
    # NOTE: to_empty leaves non-persistent buffers uninitialised; rebuild the rotary tables.
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset(device)
    loaded = _load_weights(model, folder, dtype, quantizer)
    missing = {name for name, _ in model.named_parameters()} - loaded
    if missing:
        raise UnsupportedModelError(f"checkpoint in {folder} lacks {sorted(missing)[:5]}")
    if quantizer is not None:
        model.quantize_head(quantizer.scheme, compute=quantizer.compute)
    return model.eval()


class _Quantizer:
    """Quantises each projection once all its weight slices are loaded (see the module
    docstring); until its first slice arrives a projection's weight stays on ``meta``."""

    def __init__(
        self, scheme: Quantization, compute: Compute, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.scheme, self.compute = scheme, compute
        self.device, self.dtype = device, dtype
        self.slices: dict[str, set[int]] = {}

    def allocate_all_but_projections(self, model: nn.Module) -> None:
        """Give every parameter and buffer its memory, but the projections' weights."""
        for module in model.modules():
            if not isinstance(module, Linear):
                module.to_empty(device=self.device, recurse=False)
            elif module.bias is not None:
                module.bias = nn.Parameter(
                    torch.empty(module.bias.shape, device=self.device), requires_grad=False
                )

    def before(self, linear: Linear, param_name: str, name: str) -> None:
        """Allocate ``linear``'s weight when its first slice comes."""
        if param_name != "weight":
            return
        if linear.packed.quantized is not None:
            raise UnsupportedModelError(f"{name}: the checkpoint holds this projection twice")
        if linear.weight.is_meta:
            linear.weight = nn.Parameter(
                torch.empty(linear.weight.shape, dtype=self.dtype, device=self.device),
                requires_grad=False,
            )

    def after(self, linear: Linear, module_name: str, param_name: str, index: int) -> None:
        """Quantise ``linear`` (and free its full-precision weight) once every slice is in."""
        if param_name != "weight":
            return
        done = self.slices.setdefault(module_name, set())
        done.update(range(len(linear.output_sizes)) if index < 0 else (index,))
        if len(done) == len(linear.output_sizes):
            linear.quantize(self.scheme, compute=self.compute)


def _load_weights(
    model: DecoderForCausalLM, folder: Path, dtype: torch.dtype, quantizer: _Quantizer | None
) -> set[str]:
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    loaded: set[str] = set()
    rank, size = tensor_parallel_of(model.config)
    for name, tensor in checkpoint_tensors(folder):
        if _SKIPPED.search(name):
            continue
        target = _place(name, model.config)
        if target is None:
            raise UnsupportedModelError(f"unexpected checkpoint tensor {name!r} in {folder}")
        module_name, param_name, index = target
        if module_name:
            linear = modules.get(module_name)
            if not isinstance(linear, Linear):
                raise UnsupportedModelError(f"unexpected checkpoint tensor {name!r} in {folder}")
            share = _Share(module_name.rsplit(".", 1)[-1], param_name, rank, size)
            if quantizer is not None:
                quantizer.before(linear, param_name, name)
            _load_projection(linear, param_name, tensor.to(dtype), index, name, share)
            if quantizer is not None:
                quantizer.after(linear, module_name, param_name, index)
            loaded.add(f"{module_name}.{param_name}")
        elif param_name in params:
            if param_name == "lm_head" and size > 1:  # NOTE: this rank's vocabulary rows
                tensor = shard_rows(tensor, rank, size)
            _copy(params[param_name], tensor.to(dtype), name)
            loaded.add(param_name)
    return loaded


@dataclass(frozen=True, slots=True)
class _Share:
    """Which part of a projection's checkpoint tensor this rank keeps."""

    kind: str  # the projection's name: qkv_proj, o_proj ...
    param: str  # weight or bias
    rank: int
    size: int

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        if self.kind in COLUMN_PARALLEL:
            return shard_rows(tensor, self.rank, self.size)
        if self.param == "weight":
            return shard_rows(tensor, self.rank, self.size, dim=1)
        return tensor if self.rank == 0 else torch.zeros_like(tensor)  # NOTE: bias added once


def _load_projection(
    linear: Linear, param_name: str, tensor: torch.Tensor, index: int, name: str, share: _Share
) -> None:
    """One slice of a fused projection, or (``index == -1``) all of them from one tensor;
    this rank's share of it."""
    if index >= 0:
        linear.load_slice(param_name, share.of(tensor), index)
        return
    sizes = (
        [size * share.size for size in linear.output_sizes]
        if share.kind in COLUMN_PARALLEL
        else list(linear.output_sizes)
    )
    if tensor.shape[0] != sum(sizes):
        raise UnsupportedModelError(
            f"{name}: expected {sum(sizes)} rows ({' + '.join(map(str, sizes))}), "
            f"got shape {tuple(tensor.shape)}"
        )
    for i, part in enumerate(torch.split(tensor, sizes, dim=0)):
        linear.load_slice(param_name, share.of(part), i)


def _place(name: str, config: ModelConfig) -> tuple[str, str, int] | None:
    """Map a checkpoint name to (fused module, param, slice) or ("", our param name, 0)."""
    match = _PROJ.match(name)
    if match:
        prefix, proj, param = match.groups()
        if proj not in _FUSED:
            return None
        fused, index = _FUSED[proj]
        return f"{prefix.removeprefix('model.')}.{fused}", param, index
    if name == "lm_head.weight":
        return ("", "lm_head", 0) if not config.tie_word_embeddings else ("", "", 0)
    if name.startswith("model."):
        return "", name.removeprefix("model."), 0
    return None


def _copy(param: nn.Parameter, tensor: torch.Tensor, name: str) -> None:
    if param.shape != tensor.shape:
        raise UnsupportedModelError(
            f"{name}: expected shape {tuple(param.shape)}, got {tuple(tensor.shape)}"
        )
    param.data.copy_(tensor)
