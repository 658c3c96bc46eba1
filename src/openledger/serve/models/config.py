"""The architecture facts the engine needs, read from a transformers ``config.json``.

One :class:`ModelConfig` describes every served family; what differs between them is data
(which norms, which activation, per-layer sliding windows, soft-capping, RoPE variants),
read here from each family's config fields, so one decoder definition
(:mod:`openledger.serve.models.decoder`) serves them all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openledger.exceptions import UnsupportedModelError

__all__ = ["SUPPORTED_MODEL_TYPES", "ModelConfig", "RopeConfig"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")
"""``model_type`` values the engine serves (Llama 2/3, Mistral, Qwen2, Qwen3, Gemma 2,
Gemma 3 text, Phi-3 / Phi-3.5)."""

_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
_GEMMA = ("gemma2", "gemma3_text")
_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclass(frozen=True, slots=True)
class RopeConfig:
    """Rotary embedding settings.

    Attributes:
        theta: Base of the frequencies.
        rope_type: ``"default"``, ``"linear"``, ``"llama3"`` or ``"longrope"`` (Phi-3).
        factor: Scaling factor (linear, llama3).
        low_freq_factor: llama3 only.
        high_freq_factor: llama3 only.
        original_max_position_embeddings: llama3 and longrope: the pretraining context.
        short_factor: longrope: per-frequency divisors while a sequence fits
            ``original_max_position_embeddings``.
        long_factor: longrope: per-frequency divisors once it is longer.
        attention_factor: longrope: cos and sin are multiplied by it (transformers'
            ``attention_scaling``); 1.0 otherwise.
    """

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0

    @property
    def long_context_from(self) -> int | None:
        """LongRoPE: the length past which a sequence is rotated with the long factors
        (its pretraining context); None for other rotary types."""
        return self.original_max_position_embeddings if self.rope_type == "longrope" else None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A decoder's shape and the per-family choices the shared decoder is built from.

    Attributes:
        model_type: One of :data:`SUPPORTED_MODEL_TYPES`.
        vocab_size: Embedding rows.
        hidden_size: Model width.
        intermediate_size: MLP width.
        num_layers: Decoder layers.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (grouped-query attention when fewer than num_heads).
        head_dim: Width of one head.
        rms_norm_eps: RMSNorm epsilon.
        max_position_embeddings: The model's context length.
        tie_word_embeddings: The LM head reuses the embedding matrix.
        qkv_bias: q/k/v projections carry a bias (Qwen2; Llama ``attention_bias``).
        o_bias: The output projection carries a bias (Llama ``attention_bias``).
        mlp_bias: MLP projections carry biases (Llama ``mlp_bias``).
        sliding_window: The window every layer shares (Mistral, Phi-3): each position
            attends to the last this-many positions; None when no window or when the
            layers differ (see :attr:`layer_windows`). The step's attention plan applies it.
        rope: Rotary embedding settings (of the global layers where they differ).
        eos_token_ids: End-of-sequence ids from ``config.json`` and ``generation_config.json``.
        layer_windows: Each layer's sliding window (None: full attention); empty means
            :attr:`sliding_window` for every layer.
        local_rope: Rotary settings of the sliding-window layers when they differ from
            :attr:`rope` (Gemma 3's ``rope_local_base_freq``); None otherwise.
        hidden_act: MLP activation of the gate, ``"silu"`` or ``"gelu_pytorch_tanh"``.
        norm_offset: RMSNorm scales by ``1 + weight`` (Gemma) instead of ``weight``.
        qk_norm: An RMSNorm over each query and key head before RoPE (Qwen3, Gemma 3).
        sandwich_norms: Norms after attention and around the MLP too (Gemma 2 and 3).
        embed_scale: Embeddings are multiplied by it (Gemma: ``sqrt(hidden_size)`` in the
            model dtype); None for no scaling.
        attn_scale: Softmax scale (``query_pre_attn_scalar ** -0.5`` for Gemma); None for
            ``head_dim ** -0.5``.
        attn_softcap: Attention logits become ``cap * tanh(logits / cap)`` (Gemma 2).
        final_softcap: Output logits are soft-capped likewise (Gemma 2).
        fused_checkpoint: The checkpoint stores ``qkv_proj`` and ``gate_up_proj`` fused
            (Phi-3).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    rope: RopeConfig = field(default_factory=RopeConfig)
    eos_token_ids: frozenset[int] = frozenset()
    layer_windows: tuple[int | None, ...] = ()
    local_rope: RopeConfig | None = None
    hidden_act: str = "silu"
    norm_offset: bool = False
    qk_norm: bool = False
    sandwich_norms: bool = False
    embed_scale: float | None = None
    attn_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    fused_checkpoint: bool = False

    def window(self, layer: int) -> int | None:
        """The sliding window of layer ``layer`` (None: full attention)."""
        return self.layer_windows[layer] if self.layer_windows else self.sliding_window

    def rope_of(self, layer: int) -> RopeConfig:
        """The rotary settings of layer ``layer``."""
        if self.local_rope is not None and self.window(layer) is not None:
            return self.local_rope
        return self.rope

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelConfig:
        """Read ``config.json`` (and ``generation_config.json`` if present) of a folder.

        Raises:
            UnsupportedModelError: Not one of :data:`SUPPORTED_MODEL_TYPES`, or a setting
                of it the engine does not serve (an activation, a RoPE type, partial
                rotary embeddings).
        """
        folder = Path(folder)
        raw = json.loads((folder / "config.json").read_text())
        generation = folder / "generation_config.json"
        extra = json.loads(generation.read_text()) if generation.is_file() else {}
        return cls.from_dict(raw, eos_from=extra)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], *, eos_from: dict[str, Any] | None = None
    ) -> ModelConfig:
        """Build from a parsed ``config.json``; see :meth:`from_folder`."""
        model_type = raw.get("model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            hint = (
                " (serve its text model, model_type gemma3_text)" if model_type == "gemma3" else ""
            )
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not served{hint}; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        gemma = model_type in _GEMMA
        if raw.get("use_bidirectional_attention"):
            raise UnsupportedModelError(
                f"{model_type} with use_bidirectional_attention (an embedding model) is not "
                "served: the engine serves causal language models"
            )
        activation = str(raw.get("hidden_activation") or raw.get("hidden_act") or "silu")
        if activation not in _ACTIVATIONS:
            raise UnsupportedModelError(
                f"{model_type} hidden_act {activation!r} is not served; use {_ACTIVATIONS}"
            )
        num_heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        head_dim = int(raw.get("head_dim") or hidden // num_heads)
        attention_bias = bool(raw.get("attention_bias", False))
        windows = _layer_windows(raw)
        uniform = windows[0] if len(set(windows)) == 1 else None
        scalar = raw.get("query_pre_attn_scalar")
        return cls(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=len(windows),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", gemma)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(raw.get("mlp_bias", False)),
            sliding_window=uniform,
            rope=_rope_config(raw, head_dim, "full_attention"),
            eos_token_ids=_eos_ids(raw) | _eos_ids(eos_from or {}),
            layer_windows=() if len(set(windows)) == 1 else tuple(windows),
            local_rope=(
                _rope_config(raw, head_dim, "sliding_attention")
                if model_type == "gemma3_text"
                else None
            ),
            hidden_act=activation,
            norm_offset=gemma,
            qk_norm=model_type in ("qwen3", "gemma3_text"),
            sandwich_norms=gemma,
            embed_scale=math.sqrt(hidden) if gemma else None,
            attn_scale=float(scalar) ** -0.5 if gemma and scalar else None,
            attn_softcap=_positive(raw.get("attn_logit_softcapping")) if gemma else None,
            final_softcap=_positive(raw.get("final_logit_softcapping")) if gemma else None,
            fused_checkpoint=model_type == "phi3",
        )


def _positive(value: Any) -> float | None:
    return float(value) if value else None


def _layer_windows(raw: dict[str, Any]) -> list[int | None]:
    """Each layer's window: ``layer_types`` (transformers >= 4.53 writes them) picks the
    sliding layers; older Gemma files give the pattern (Gemma 2: every other layer from
    the first; Gemma 3: ``sliding_window_pattern``, every layer but each n-th)."""
    num_layers = int(raw["num_hidden_layers"])
    model_type = raw.get("model_type")
    window = _sliding_window(raw)
    types = raw.get("layer_types")
    if types is None and model_type == "gemma2":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    if types is None and model_type == "gemma3_text":
        pattern = int(raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern") or 6)
        types = [
            "sliding_attention" if (i + 1) % pattern else "full_attention"
            for i in range(num_layers)
        ]
    if types is None:
        return [window] * num_layers
    if len(types) != num_layers:
        raise UnsupportedModelError(
            f"layer_types names {len(types)} layers, num_hidden_layers is {num_layers}"
        )
    unknown = set(types) - {"sliding_attention", "full_attention"}
    if unknown:
        raise UnsupportedModelError(f"layer_types {sorted(unknown)} are not served")
    return [window if kind == "sliding_attention" else None for kind in types]


def _sliding_window(raw: dict[str, Any]) -> int | None:
    window = raw.get("sliding_window")
    if raw.get("model_type") in ("qwen2", "qwen3") and not raw.get("use_sliding_window", False):
        return None
    return int(window) if window else None


def _rope_config(raw: dict[str, Any], head_dim: int, layer_type: str) -> RopeConfig:
    # NOTE: transformers >= 5 writes `rope_parameters` (theta inside; Gemma 3 one dict per
    # layer type); older files have `rope_theta` beside an optional `rope_scaling`, and
    # Gemma 3 its local base as `rope_local_base_freq`.
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    if layer_type in params or "full_attention" in params:
        params = dict(params.get(layer_type) or {})
    elif layer_type == "sliding_attention":  # an older Gemma 3 file: no scaling locally
        params = {"rope_theta": raw.get("rope_local_base_freq", 10000.0)}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    if rope_type in ("su", "yarn") and raw.get("model_type") == "phi3":
        rope_type = "longrope"  # NOTE: transformers reads Phi-3's old names as longrope
    if rope_type not in _ROPE_TYPES:
        raise UnsupportedModelError(f"rope_type {rope_type!r} is not served; use {_ROPE_TYPES}")
    partial = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)))
    if partial != 1.0:
        raise UnsupportedModelError(f"partial_rotary_factor {partial} is not served (only 1.0)")
    if rope_type == "longrope":
        return _longrope(raw, params, theta, head_dim)
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _longrope(
    raw: dict[str, Any], params: dict[str, Any], theta: float, head_dim: int
) -> RopeConfig:
    """Phi-3's LongRoPE, with the attention factor transformers derives when none is given:
    ``sqrt(1 + ln(factor) / ln(original))``, ``factor = max_position / original`` (1 at
    or below 1)."""
    original = int(
        params.get("original_max_position_embeddings")
        or raw.get("original_max_position_embeddings")
        or raw.get("max_position_embeddings", 2048)
    )
    short, long = params.get("short_factor"), params.get("long_factor")
    if not short or not long or len(short) != head_dim // 2 or len(long) != head_dim // 2:
        raise UnsupportedModelError(
            f"longrope needs short_factor and long_factor of {head_dim // 2} values each"
        )
    factor = params.get("factor") or int(raw.get("max_position_embeddings", original)) / original
    attention = params.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeConfig(
        theta=theta,
        rope_type="longrope",
        factor=float(factor),
        original_max_position_embeddings=original,
        short_factor=tuple(float(f) for f in short),
        long_factor=tuple(float(f) for f in long),
        attention_factor=float(attention),
    )


def _eos_ids(raw: dict[str, Any]) -> frozenset[int]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return frozenset()
    return frozenset(int(e) for e in (eos if isinstance(eos, list) else [eos]))
