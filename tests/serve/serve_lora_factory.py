"""Test helpers: PEFT adapters with random non-zero weights, and PEFT's greedy reference.

A DoRA magnitude starts at the weight norm (``g = 1``) and a ``modules_to_save`` copy at the
base module; both are perturbed too, so that serving them wrongly (ignoring the magnitude,
or the copy) changes the logits and the greedy tokens.
"""

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
    """Save a PEFT LoRA adapter of ``base`` whose A and B are both random (non-zero), and
    so are its DoRA magnitudes and ``modules_to_save`` copies (``lora``: any ``LoraConfig``
    options: ``use_dora``, ``modules_to_save``, ``use_rslora``, ``rank_pattern`` ...)."""
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
            elif "lora_magnitude_vector" in name:
                param.data.mul_(torch.empty_like(param).uniform_(0.5, 1.5))
            elif "modules_to_save" in name:
                param.data.add_(torch.randn_like(param) * param.data.std())
    peft_model.save_pretrained(out, safe_serialization=safe)
    return out


def peft_generate(
    base: Path, adapter: Path | None, prompt: list[int], new_tokens: int
) -> tuple[list[int], torch.Tensor]:
    """transformers + PEFT greedy ``generate`` of one prompt with ``adapter`` (None: the base
    alone), fp32: its new tokens and log-probabilities ``[new_tokens, vocab]`` (float64)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if adapter is not None:  # NOTE: a model per adapter: modules_to_save copies swap modules
        model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = [int(t) for t in out.sequences[0, len(prompt) :]]
    return tokens, torch.log_softmax(torch.cat(out.logits).double(), dim=-1)
