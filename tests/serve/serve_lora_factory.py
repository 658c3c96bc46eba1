"""Test helpers: tiny base models and PEFT LoRA adapters with random non-zero B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_peft_adapter(
    base: Path,
    out: Path,
    *,
    r: int,
    targets: list[str],
    seed: int,
    safe: bool = True,
    **lora: Any,
) -> Path:
    """Save a PEFT LoRA adapter of ``base`` whose A and B are both random (non-zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora.setdefault("lora_alpha", 2 * r)
    config = LoraConfig(r=r, target_modules=targets, init_lora_weights=False, **lora)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # larger updates, so that adapters change greedy tokens
                param.data.normal_(0.0, 0.2)
    peft_model.save_pretrained(out, safe_serialization=safe)
    return out
