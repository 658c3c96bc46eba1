"""Tiny random models of the supported families, built in code for tests and examples.

They load in milliseconds, need no files or network, and exercise the same code paths as
real checkpoints: grouped-query attention, tied and untied embeddings, Qwen2's q/k/v
biases, Mistral's sliding-window config, Qwen3's q/k norms, Gemma 2's soft-capping and
alternating sliding-window layers, Gemma 3's local RoPE base, Phi-3's fused projections
and LongRoPE. A small byte-level BPE tokenizer with a ChatML
chat template comes with them, so chat formatting and streaming work too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from openledger.exceptions import ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

__all__ = ["TINY_FAMILIES", "save_tiny_model", "tiny_config", "tiny_tokenizer"]

Family = Literal["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]
TINY_FAMILIES: tuple[Family, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
)
"""Families :func:`tiny_config` can build."""

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Datanets collect records from many contributors; each record is hashed and signed.",
    "A LoRA adapter adds a low-rank update B A to a frozen weight matrix W.",
    "Rewards are split among contributors in proportion to their influence.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: ,.;:!?()[]{}'\"-",
    "Ünïcödé wörds, naïve café, 東京, Москва, emoji 🙂 are bytes too.",
]

_BASE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.08,
}
_FAMILY: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": False, "rope_theta": 10000.0},
    "mistral": {"tie_word_embeddings": False, "rope_theta": 10000.0, "sliding_window": None},
    "qwen2": {"tie_word_embeddings": True, "rope_theta": 10000.0, "use_sliding_window": False},
    "qwen3": {"tie_word_embeddings": True, "rope_theta": 10000.0, "head_dim": 16},
    # NOTE: the caps are low so that they change the tiny model's outputs
    "gemma2": {
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 8,
        "attn_logit_softcapping": 2.0,
        "final_logit_softcapping": 3.0,
    },
    "gemma3_text": {
        "num_hidden_layers": 3,
        "head_dim": 16,
        "query_pre_attn_scalar": 24,
        "sliding_window": 8,
        "sliding_window_pattern": 3,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
    },
    "phi3": {
        "tie_word_embeddings": False,
        "max_position_embeddings": 512,
        "original_max_position_embeddings": 32,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": [1.0 + i / 16 for i in range(8)],
            "long_factor": [1.5 + i / 4 for i in range(8)],
        },
    },
}


def tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Build a small byte-level BPE tokenizer with a ChatML chat template.

    Deterministic: the same ``vocab_size`` gives the same vocabulary on every machine.

    Args:
        vocab_size: Total vocabulary including the 256 byte tokens and 3 special tokens.

    Returns:
        A fast tokenizer whose EOS (and pad) token is ``<|im_end|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ConfigError(f"vocab_size must be >= 260 (bytes + specials), got {vocab_size}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=_CHAT_TEMPLATE,
    )


def tiny_config(family: Family = "llama", **overrides: Any) -> PretrainedConfig:
    """Build a tiny random-model config of one family.

    Args:
        family: One of :data:`TINY_FAMILIES` (a transformers ``model_type``).
        **overrides: Any config field, e.g. ``num_hidden_layers=3`` or
            ``rope_scaling={"rope_type": "llama3", ...}``.

    Returns:
        A transformers config of that family (``LlamaConfig``, ``Qwen3Config``,
        ``Gemma2Config``, ``Gemma3TextConfig``, ``Phi3Config``, ...) whose vocabulary
        matches :func:`tiny_tokenizer` unless overridden. Phi-3's has LongRoPE with a
        32-position pretraining context, so short generations cross into the long factors.

    Raises:
        ConfigError: If ``family`` is unknown.
    """
    from transformers import AutoConfig

    if family not in _FAMILY:
        raise ConfigError(f"family {family!r} is not one of {', '.join(TINY_FAMILIES)}")
    fields = {**_BASE, **_FAMILY[family], "vocab_size": 384}
    fields.update({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
    fields.update(overrides)
    return AutoConfig.for_model(family, **fields)


def save_tiny_model(
    path: str | os.PathLike[str], family: Family = "llama", *, seed: int = 0, **overrides: Any
) -> Path:
    """Write a tiny random model and its tokenizer as a Hugging Face folder.

    The folder loads with :func:`openledger.models.load_base_model` and with plain
    ``transformers`` ``from_pretrained``.

    Args:
        path: Folder to create (parents too); existing files are overwritten.
        family: One of :data:`TINY_FAMILIES`.
        seed: Seed for the random weights; the same seed gives the same weights.
        **overrides: Config fields passed to :func:`tiny_config`.

    Returns:
        The folder's path.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    tokenizer = tiny_tokenizer(max(config.vocab_size, 260))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
