"""The architecture facts the engine needs, read from a transformers ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openledger.exceptions import UnsupportedModelError

__all__ = ["SUPPORTED_MODEL_TYPES", "ModelConfig", "RopeConfig"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
"""``model_type`` values the Llama-family model class serves."""

_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True, slots=True)
class RopeConfig:
    """Rotary embedding settings.

    Attributes:
        theta: Base of the frequencies.
        rope_type: ``"default"``, ``"linear"`` or ``"llama3"``.
        factor: Scaling factor (linear, llama3).
        low_freq_factor: llama3 only.
        high_freq_factor: llama3 only.
        original_max_position_embeddings: llama3 only.
    """

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A Llama-family decoder's shape.

    Attributes:
        model_type: ``"llama"``, ``"mistral"`` or ``"qwen2"``.
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
        sliding_window: Attend only to the last this-many positions (Mistral); None for all.
        rope: Rotary embedding settings.
        eos_token_ids: End-of-sequence ids from ``config.json`` and ``generation_config.json``.
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

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelConfig:
        """Read ``config.json`` (and ``generation_config.json`` if present) of a folder.

        Raises:
            UnsupportedModelError: Not a Llama, Mistral or Qwen2 checkpoint, an
                activation other than SiLU, or an unsupported RoPE type.
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
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not served; supported: {SUPPORTED_MODEL_TYPES}"
            )
        if raw.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act {raw['hidden_act']!r}: only silu is served")
        num_heads = int(raw["num_attention_heads"])
        attention_bias = bool(raw.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or raw["hidden_size"] // num_heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(raw.get("mlp_bias", False)),
            sliding_window=_sliding_window(raw),
            rope=_rope_config(raw),
            eos_token_ids=_eos_ids(raw) | _eos_ids(eos_from or {}),
        )


def _sliding_window(raw: dict[str, Any]) -> int | None:
    window = raw.get("sliding_window")
    if raw.get("model_type") == "qwen2" and not raw.get("use_sliding_window", False):
        return None
    return int(window) if window else None


def _rope_config(raw: dict[str, Any]) -> RopeConfig:
    # NOTE: transformers >= 5 writes `rope_parameters` (theta inside); older files have
    # `rope_theta` beside an optional `rope_scaling`.
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    if rope_type not in _ROPE_TYPES:
        raise UnsupportedModelError(f"rope_type {rope_type!r} is not served; use {_ROPE_TYPES}")
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _eos_ids(raw: dict[str, Any]) -> frozenset[int]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return frozenset()
    return frozenset(int(e) for e in (eos if isinstance(eos, list) else [eos]))
