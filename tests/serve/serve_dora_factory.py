"""Test helpers: PEFT adapters with DoRA magnitudes and ``modules_to_save`` copies that matter.

PEFT initialises a DoRA magnitude to the weight norm (so ``g = 1``) and a saved module to a
copy of the base one; both are perturbed here, so that the engine serving them wrongly
(ignoring the magnitude, or the copy) changes the logits and the greedy tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_rich_adapter(
    base: Path,
    out: Path,
    *,
    r: int,
    targets: list[str],
    seed: int,
    **lora: Any,
) -> Path:
    """Save a PEFT adapter of ``base`` (any ``LoraConfig`` options in ``lora``: ``use_dora``,
    ``modules_to_save``, ``use_rslora``, ``rank_pattern``, ``alpha_pattern`` ...) whose A, B,
    magnitudes and saved copies are all random."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora.setdefault("lora_alpha", 2 * r)
    config = LoraConfig(r=r, target_modules=targets, init_lora_weights=False, **lora)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0.0, 0.2)
            elif "lora_magnitude_vector" in name:
                param.data.mul_(torch.empty_like(param).uniform_(0.5, 1.5))
            elif "modules_to_save" in name:
                param.data.add_(torch.randn_like(param) * param.data.std())
    peft_model.save_pretrained(out, safe_serialization=True)
    return out
