"""Fixtures for the serving tests: tiny random checkpoints of each family, and a reference."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

# NOTE: without CUDA, Triton kernels run on CPU tensors under its interpreter, which must
# be chosen before triton is first imported. On a CUDA machine the real compiler is kept.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

CHECKPOINTS: dict[str, dict[str, Any]] = {
    "llama": {"family": "llama"},
    "llama3-rope": {
        "family": "llama",
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
    "mistral": {"family": "mistral", "num_key_value_heads": 1},
    "mistral-window": {"family": "mistral", "sliding_window": 6},
    "qwen2": {"family": "qwen2"},
}


def _save_checkpoint(folder: Path, name: str, seed: int) -> Path:
    """A tiny random model; every bias (Qwen2's q/k/v) gets random values too."""
    from transformers import AutoModelForCausalLM

    from openledger.models import tiny_config, tiny_tokenizer

    spec = dict(CHECKPOINTS[name])
    config = tiny_config(spec.pop("family"), **spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        for param_name, param in model.named_parameters():
            if param_name.endswith(".bias"):
                param.data.normal_(0.0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer(config.vocab_size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folder per entry of CHECKPOINTS."""
    root = tmp_path_factory.mktemp("serve-ckpt")
    return {
        name: _save_checkpoint(root / name, name, seed=7 + i) for i, name in enumerate(CHECKPOINTS)
    }


@pytest.fixture(scope="session")
def hf_greedy() -> Callable[[Path, list[int], int], list[int]]:
    """transformers ``generate`` (greedy, fp32, CPU) on one prompt: the reference tokens."""
    from transformers import AutoModelForCausalLM

    cache: dict[Path, Any] = {}

    def run(folder: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        if folder not in cache:
            cache[folder] = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = cache[folder].generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        return [int(t) for t in out[0, len(prompt_ids) :]]

    return run
