"""finetune: the data fed equals the log, resume, refusals before training, eval, packing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, Record, record_hash
from openledger.exceptions import (
    AccessDeniedError,
    ChatTemplateError,
    MissingDependencyError,
    RecipeError,
    TrainDataError,
)
from openledger.train import LoraRecipe, finetune, format_record

Records = Callable[[int], list[InstructionRecord]]
NO_EOS_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def recipe(base: Path, **changes: Any) -> LoraRecipe:
    fields: dict[str, Any] = {
        "base_model": str(base),
        "r": 8,
        "dropout": 0.0,
        "learning_rate": 5e-3,
        "max_steps": 4,
        "batch_size": 2,
        "max_length": 64,
    }
    return LoraRecipe.from_dict({**fields, **changes})


class FedRows(TrainerCallback):
    """Independently records what the model was fed: the rows of each forward, per step."""

    def __init__(self, model_inputs: list[list[int]]) -> None:
        self.rows = model_inputs
        self.steps: list[list[list[int]]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps.append(list(self.rows))
        self.rows.clear()


def test_the_data_fed_to_the_model_is_what_the_log_says(
    memorising_llama_dir: Path,
    tmp_path: Path,
    colour_records: Records,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers.models.llama.modeling_llama import LlamaModel

    rows: list[list[int]] = []
    forward = LlamaModel.forward

    def spy(self: Any, input_ids: Any = None, **kwargs: Any) -> Any:
        if self.training:
            rows.extend(input_ids.tolist())
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(LlamaModel, "forward", spy)
    fed = FedRows(rows)
    records = colour_records(8)
    run = finetune(
        recipe(memorising_llama_dir, gradient_accumulation=2, max_steps=5),
        records,
        tmp_path / "out",
        callbacks=[fed],
        progress=False,
    )
    tokenizer = run.tokenizer
    by_ids = {tuple(format_record(r, tokenizer)[0]): record_hash(r) for r in records}

    def which(row: list[int]) -> str:
        matches = [h for ids, h in by_ids.items() if list(ids) == row[: len(ids)]]
        assert len(matches) == 1
        return matches[0]

    seen = [[which(row) for row in step] for step in fed.steps]
    assert seen == [list(s.record_hashes) for s in run.training_log.steps]
    assert len(seen) == 5
    assert all(len(step) == 4 for step in seen)  # batch 2 x accumulation 2


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_continues_identically(
    memorising_llama_dir: Path, tmp_path: Path, colour_records: Records
) -> None:
    plan = recipe(memorising_llama_dir, max_steps=6, dropout=0.1)
    data = colour_records(5)
    straight = finetune(plan, data, tmp_path / "straight", save_steps=3, progress=False)
    finetune(plan, data, tmp_path / "split", save_steps=3, callbacks=[StopAt(3)], progress=False)
    resumed = finetune(
        plan, data, tmp_path / "split", save_steps=3, resume_from_checkpoint=True, progress=False
    )
    assert resumed.training_log.steps == straight.training_log.steps
    assert resumed.adapter.manifest.training_log_root == straight.adapter.manifest.training_log_root
    ours = load_file(tmp_path / "split" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-6, rtol=0)
    with pytest.raises(TrainDataError, match="other data"):
        finetune(plan, data[:4], tmp_path / "split", resume_from_checkpoint=True, progress=False)


class NeverTrain(TrainerCallback):
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        raise AssertionError("training started despite bad input")


class Note(Record):
    body: str


def private_snapshot(folder: Path, records: list[InstructionRecord]) -> Any:
    owner = Account.create()
    datanet = Datanet.create(
        folder, name="p", schema=InstructionRecord, visibility="private", owner=owner
    )
    datanet.contribute(records, contributor=owner)
    return datanet.snapshot()


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("empty", TrainDataError, "empty"),
        ("schema", TrainDataError, "cannot be formatted"),
        ("private", AccessDeniedError, "private"),
        ("module", RecipeError, "'target_modules'"),
        ("too long", TrainDataError, "max_length=8"),
        ("no eos", ChatTemplateError, "never stop"),
        ("4bit", MissingDependencyError, "bitsandbytes and a CUDA GPU"),
    ],
)
def test_bad_input_is_refused_before_training(
    case: str,
    error: type[Exception],
    message: str,
    memorising_llama_dir: Path,
    tmp_path: Path,
    colour_records: Records,
) -> None:
    plan, data = recipe(memorising_llama_dir), colour_records(4)
    if case == "empty":
        data = []
    elif case == "schema":
        data = [Note(body="x")]
    elif case == "private":
        data = private_snapshot(tmp_path / "dn", colour_records(2))
    elif case == "module":
        plan = plan.replace(target_modules=["q_proj", "query_key_value"])
    elif case == "too long":
        plan = plan.replace(max_length=8)
    elif case == "no eos":
        plan = plan.replace(chat_template=NO_EOS_TEMPLATE)
    else:
        plan = plan.replace(quantization="4bit")
    with pytest.raises(error, match=message):
        finetune(plan, data, tmp_path / "out", callbacks=[NeverTrain()], progress=False)


def test_eval_split_early_stopping_and_held_out_records(
    memorising_llama_dir: Path, tmp_path: Path
) -> None:
    # NOTE: every prompt appears twice with different answers, so learning the training
    # answer of a held-out prompt makes the eval loss worse and early stopping must fire.
    words = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy"]
    data = [
        InstructionRecord(instruction=f"Code {w}?", response=answer)
        for w in words
        for answer in (f"{w.upper()} ok.", "No.")
    ]
    plan = recipe(
        memorising_llama_dir,
        eval_split=0.25,
        eval_steps=2,
        early_stopping_patience=1,
        max_steps=60,
        learning_rate=1e-2,
        batch_size=4,
    )
    run = finetune(plan, data, tmp_path / "out", progress=False)
    evals = [e for e in run.history if "eval_loss" in e]
    assert len(evals) >= 2
    for entry in evals:
        assert entry["eval_perplexity"] == pytest.approx(2.718281828 ** entry["eval_loss"])
    assert run.metrics["eval_perplexity"] == pytest.approx(2.718281828 ** run.metrics["eval_loss"])
    assert (run.metrics["num_train_records"], run.metrics["num_eval_records"]) == (12, 4)
    used = set(run.training_log.record_counts())
    assert len(used) == 12
    assert len({record_hash(r) for r in data} - used) == 4  # held out: never in the log
    assert run.metrics["num_steps"] < 60


def test_packing_trains_on_every_record(
    memorising_llama_dir: Path, tmp_path: Path, colour_records: Records
) -> None:
    data = colour_records(8)
    run = finetune(
        recipe(memorising_llama_dir, packing=True, batch_size=1, max_steps=6, max_length=128),
        data,
        tmp_path / "out",
        progress=False,
    )
    assert set(run.training_log.record_counts()) == {record_hash(r) for r in data}
    assert len(run.training_log.steps[0].record_hashes) > 1  # several records per row
    curve = [e["loss"] for e in run.history if "loss" in e]
    assert curve[-1] < curve[0]


@pytest.mark.parametrize(
    "changes",
    [
        {"use_dora": True},
        {"use_rslora": True},
        {"init": "gaussian"},
        {"init": "pissa"},
        {"init": "olora"},
        {"loraplus_lr_ratio": 16.0},
        {"target_modules": ["q_proj", "v_proj"]},
    ],
)
def test_recipe_variants_train(
    changes: dict[str, Any], memorising_llama_dir: Path, tmp_path: Path, colour_records: Records
) -> None:
    run = finetune(
        recipe(memorising_llama_dir, max_steps=1, **changes),
        colour_records(2),
        tmp_path / "o",
        progress=False,
    )
    config = __import__("json").loads((run.output_dir / "adapter_config.json").read_text())
    if "use_dora" in changes:
        assert config["use_dora"] is True
    if "init" in changes:
        assert config["init_lora_weights"] == changes["init"]
    if "target_modules" in changes:
        assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert run.metrics["num_steps"] == 1


def test_loftq_needs_scipy_or_trains(
    memorising_llama_dir: Path, tmp_path: Path, colour_records: Records
) -> None:
    import importlib.util

    plan = recipe(memorising_llama_dir, max_steps=1, init="loftq")
    if importlib.util.find_spec("scipy") is None:
        with pytest.raises(MissingDependencyError, match="scipy"):
            finetune(plan, colour_records(2), tmp_path / "o", callbacks=[NeverTrain()])
    else:
        run = finetune(plan, colour_records(2), tmp_path / "o", progress=False)
        assert run.metrics["num_steps"] == 1
