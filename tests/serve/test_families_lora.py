"""A PEFT LoRA on every linear projection of Qwen3, Gemma 2, Gemma 3 (text) and Phi-3 (its
fused ``qkv_proj`` and ``gate_up_proj`` included), served in one batch beside the base
model, matches transformers + PEFT (fp32, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.numerics import assert_rows_close, forward_terms
from tests.serve.serve_lora_factory import make_peft_adapter, peft_generate

from openledger.models import save_tiny_model
from openledger.serve import Engine, EngineConfig, SamplingParams

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FAMILIES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "qwen3": ({"head_dim": 32}, ALL),
    "gemma2": ({}, ALL),
    "gemma3_text": ({"num_key_value_heads": 1}, ALL),
    # Phi-3's q|k|v and gate|up are single fused modules in transformers, and PEFT's targets
    "phi3": ({}, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
}
NEW = 8


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_on_every_projection_matches_peft(family: str, tmp_path: Path) -> None:
    from transformers import AutoConfig

    overrides, targets = FAMILIES[family]
    base = save_tiny_model(tmp_path / "base", family, seed=5, **overrides)  # type: ignore[arg-type]
    adapter = make_peft_adapter(base, tmp_path / "lora", r=4, targets=targets, seed=9)
    config = AutoConfig.from_pretrained(base)
    engine = Engine(base, EngineConfig(block_size=4, num_blocks=96, lora_backend="torch"))
    engine.add_adapter("lora", adapter)
    prompt = engine.tokenizer("A LoRA adapter adds a low-rank update").input_ids
    vocab = config.vocab_size
    params = [
        SamplingParams(max_tokens=NEW, min_tokens=NEW, adapter=choice, logprobs=vocab)
        for choice in ("lora", None)
    ]
    outputs = engine.generate([prompt, prompt], params)
    terms = forward_terms(config, len(prompt) + NEW) + config.hidden_size + vocab
    wants = {}
    for choice, output in zip(("lora", None), outputs, strict=True):
        tokens, want = peft_generate(base, adapter if choice else None, prompt, NEW)
        assert output.token_ids == tokens, (family, choice)
        assert output.logprobs is not None
        got = torch.tensor(
            [[row[t] for t in range(vocab)] for row in output.logprobs], dtype=torch.float64
        )
        assert_rows_close(got, want, dtype=torch.float32, terms=terms, msg=f"{family} {choice}: ")
        wants[choice] = want
    # the adapter changes the outputs: serving the base model alone could not pass
    assert not torch.allclose(wants["lora"], wants[None], atol=1e-3)
