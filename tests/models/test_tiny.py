"""Tiny random configs of every family, and their tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from openledger.exceptions import ConfigError
from openledger.models import TINY_FAMILIES, save_tiny_model, tiny_config, tiny_tokenizer


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_builds_and_runs(family: str) -> None:
    config = tiny_config(family)  # type: ignore[arg-type]
    assert config.model_type == family
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    model = AutoModelForCausalLM.from_config(config)
    logits = model(torch.arange(10).reshape(1, 10)).logits
    assert logits.shape == (1, 10, config.vocab_size)


def test_family_specifics() -> None:
    qwen = AutoModelForCausalLM.from_config(tiny_config("qwen2"))
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None
    assert qwen.lm_head.weight.data_ptr() == qwen.model.embed_tokens.weight.data_ptr()
    llama = AutoModelForCausalLM.from_config(tiny_config("llama"))
    assert llama.model.layers[0].self_attn.q_proj.bias is None
    assert llama.lm_head.weight.data_ptr() != llama.model.embed_tokens.weight.data_ptr()


def test_overrides_apply() -> None:
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128,
        "rope_theta": 10000.0,
    }
    config = tiny_config("llama", num_hidden_layers=3, rope_parameters=scaling)
    assert config.num_hidden_layers == 3
    assert config.rope_parameters["rope_type"] == "llama3"


def test_unknown_family() -> None:
    with pytest.raises(ConfigError, match="gpt2"):
        tiny_config("gpt2")  # type: ignore[arg-type]


def test_tokenizer_is_deterministic_and_round_trips() -> None:
    first, second = tiny_tokenizer(), tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert len(first) == 384
    text = "Ünïcödé 東京 🙂 and plain ascii"
    assert first.decode(first(text).input_ids) == text
    assert first.eos_token == "<|im_end|>"


def test_tokenizer_chat_template() -> None:
    tokenizer = tiny_tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_too_small() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        tiny_tokenizer(100)


def test_saved_model_is_seeded(tmp_path: Path) -> None:
    a = save_tiny_model(tmp_path / "a", "mistral", seed=3)
    b = save_tiny_model(tmp_path / "b", "mistral", seed=3)
    c = save_tiny_model(tmp_path / "c", "mistral", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
