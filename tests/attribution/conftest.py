"""Fixtures for openledger.attribution: tiny Llamas trained on datanets of known contributors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, Snapshot
from openledger.train import LoraRecipe, TrainingRun, finetune


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module(one_torch_thread: None) -> None:
    """Every module here runs on one torch thread (see tests/conftest.py)."""


def recipe(base: Path, **changes: Any) -> LoraRecipe:
    """A small LoRA recipe (q/v projections, r=4) that trains a tiny Llama near convergence."""
    fields: dict[str, Any] = {
        "base_model": str(base),
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "learning_rate": 1e-2,
        "max_steps": 60,
        "batch_size": 4,
        "max_length": 64,
        "seed": 0,
    }
    return LoraRecipe.from_dict({**fields, **changes})


Groups = Sequence[Sequence[InstructionRecord]]


def make_snapshot(folder: Path, groups: Groups, accounts: Sequence[Account]) -> Snapshot:
    """Snapshot a public datanet where ``accounts[i]`` contributed ``groups[i]``."""
    datanet = Datanet.create(folder, name="facts", schema=InstructionRecord)
    for group, account in zip(groups, accounts, strict=True):
        if group:
            datanet.contribute(list(group), contributor=account)
    return datanet.snapshot()


def train(base: Path, snapshot: Any, folder: Path, **changes: Any) -> TrainingRun:
    """Fine-tune the recipe on ``snapshot`` (or records) without progress output."""
    return finetune(recipe(base, **changes), snapshot, folder, progress=False)


@pytest.fixture(name="make_snapshot", scope="session")
def make_snapshot_fixture() -> Callable[..., Snapshot]:
    """The :func:`make_snapshot` factory."""
    return make_snapshot


WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "plum", "rust"]


def colour_records(words: Sequence[str] = WORDS) -> list[InstructionRecord]:
    """Records whose answers are recognisable from their prompts (``Code red?`` -> ``RED ok.``)."""
    return [InstructionRecord(instruction=f"Code {w}?", response=f"{w.upper()} ok.") for w in words]


@pytest.fixture(scope="module")
def colour_run(
    memorising_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Snapshot, TrainingRun, list[Account]]:
    """Ten colour records from two contributors, trained near convergence."""
    folder = tmp_path_factory.mktemp("colour-run")
    accounts = [Account.create(), Account.create()]
    records = colour_records()
    snapshot = make_snapshot(folder / "dn", [records[:6], records[6:]], accounts)
    return snapshot, train(memorising_llama_dir, snapshot, folder / "adapter"), accounts


def random_lora_model(base: Path, rank: int, seed: int) -> tuple[Any, list[Any]]:
    """The tiny model in ``base`` with random, non-zero LoRA factors of ``rank`` on the
    attention and MLP projections, in eval mode, and its LoRA pairs (only they train)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from openledger.attribution.gradients import lora_pairs
    from openledger.models import load_base_model

    torch.manual_seed(seed)
    model, _ = load_base_model(str(base), dtype="float32", device="cpu")
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config).eval()
    return peft_model, lora_pairs(peft_model)


def random_example(length: int, learnt_from: int, seed: int) -> tuple[list[int], list[int]]:
    """``length`` random token ids, learnt from position ``learnt_from`` on."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (length,), generator=generator).tolist()
    return ids, [-100] * learnt_from + ids[learnt_from:]
