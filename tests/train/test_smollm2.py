"""A few real fine-tuning steps on the offline SmolLM2-135M-Instruct (marked slow)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tests.numerics import assert_logits_close

from openledger.data import InstructionRecord
from openledger.train import LoraRecipe, check_eos, finetune, format_record

pytestmark = pytest.mark.slow

Records = Callable[[int], list[InstructionRecord]]


def test_smollm2_fine_tunes_and_plain_peft_agrees(
    smollm2_dir: Path, tmp_path: Path, colour_records: Records
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = LoraRecipe(
        base_model="smollm2-135m-instruct",
        r=8,
        learning_rate=1e-3,
        max_steps=3,
        batch_size=2,
        max_length=128,
    )
    run = finetune(recipe, colour_records(4), tmp_path / "out", progress=False)
    check_eos(run.tokenizer)
    ids, labels = format_record(colour_records(1)[0], run.tokenizer)
    learnt = run.tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label >= 0])
    assert learnt == "RED ok.<|im_end|>"
    assert run.adapter.manifest.base_model == "smollm2-135m-instruct"
    assert run.adapter.manifest.num_steps == 3
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(run.output_dir)).eval()
    inputs = run.tokenizer("What is the capital of France?", return_tensors="pt")
    with torch.no_grad():
        assert_logits_close(plain(**inputs).logits, run.model(**inputs).logits, base.config)
