"""finetune on a tiny Llama: memorisation, plain-PEFT parity, manifest, merge, evaluate."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.numerics import assert_logits_close

from openledger.crypto import Account, keccak256
from openledger.data import Datanet, InstructionRecord, Snapshot
from openledger.exceptions import ManifestError
from openledger.train import (
    MANIFEST_FILE,
    Adapter,
    LoraRecipe,
    TrainingLog,
    TrainingRun,
    evaluate,
    finetune,
    merge_and_save,
)

Records = Callable[[int], list[InstructionRecord]]


@pytest.fixture(scope="module")
def snapshot(
    tmp_path_factory: pytest.TempPathFactory, colour_records: Records
) -> Iterator[Snapshot]:
    folder = tmp_path_factory.mktemp("datanet")
    datanet = Datanet.create(folder / "dn", name="colours", schema=InstructionRecord)
    datanet.contribute(colour_records(8), contributor=Account.create())
    yield datanet.snapshot()
    datanet.close()


def memorise(base: Path, **changes: Any) -> LoraRecipe:
    fields: dict[str, Any] = {
        "base_model": str(base),
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "learning_rate": 1e-2,
        "max_steps": 80,
        "batch_size": 4,
        "max_length": 64,
    }
    return LoraRecipe.from_dict({**fields, **changes})


@pytest.fixture(scope="module")
def run(
    memorising_llama_dir: Path, snapshot: Snapshot, tmp_path_factory: pytest.TempPathFactory
) -> TrainingRun:
    out = tmp_path_factory.mktemp("runs") / "colours"
    return finetune(memorise(memorising_llama_dir), snapshot, out, progress=False)


def losses(run: TrainingRun) -> list[float]:
    return [entry["loss"] for entry in run.history if "loss" in entry]


def test_a_tiny_llama_memorises_to_near_zero_loss(run: TrainingRun) -> None:
    curve = losses(run)
    assert len(curve) == 80
    assert curve[0] > 3.0
    assert max(curve[-5:]) < 0.05
    assert run.metrics["num_steps"] == 80
    assert run.metrics["num_tokens_trained"] > 0


def test_plain_peft_loads_the_folder_and_gives_the_same_logits(
    run: TrainingRun, memorising_llama_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(memorising_llama_dir, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(run.output_dir)).eval()
    ids = run.tokenizer("<|im_start|>user\nCode teal?<|im_end|>\n", return_tensors="pt")
    with torch.no_grad():
        ours = run.model(**ids).logits
        theirs = plain(**ids).logits
    assert_logits_close(theirs, ours, base.config)


def test_the_manifest_is_complete_and_recomputes(
    run: TrainingRun, snapshot: Snapshot, memorising_llama_dir: Path
) -> None:
    folder = run.output_dir
    body = json.loads((folder / MANIFEST_FILE).read_text())
    weights = (folder / "adapter_model.safetensors").read_bytes()
    assert body["adapter_id"] == "0x" + keccak256(weights).hex() == run.adapter.id
    base_weights = (memorising_llama_dir / "model.safetensors").read_bytes()
    assert body["base_model_weights_hash"] == "0x" + keccak256(base_weights).hex()
    assert body["base_model"] == str(memorising_llama_dir)
    assert body["recipe"] == memorise(memorising_llama_dir).to_dict()
    assert body["recipe_hash"] == memorise(memorising_llama_dir).hash
    assert body["datanet_id"] == snapshot.datanet_id
    assert (body["snapshot_id"], body["snapshot_root"]) == (snapshot.id, snapshot.root)
    assert body["training_log_root"] == TrainingLog.load(folder / "training_log.json").root
    assert (body["num_steps"], body["num_records"], body["num_records_trained"]) == (80, 8, 8)
    assert (
        body["chat_template_hash"] == "0x" + keccak256(run.tokenizer.chat_template.encode()).hex()
    )
    assert {"train_loss", "tokens_per_second", "train_runtime"} <= set(body["metrics"])
    assert set(body["versions"]) == {"openledger", "torch", "transformers", "peft"}
    assert body["created_at"] > 0
    assert {p.name for p in folder.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_log.json",
        MANIFEST_FILE,
    }


def test_the_model_manifest_registers_on_chain_under_its_model_id(
    run: TrainingRun, snapshot: Snapshot
) -> None:
    from openledger.chain import connect, model_id

    manifest = run.adapter.model_manifest()
    assert manifest.adapter_weights_hash == run.adapter.id
    assert manifest.base_model == run.adapter.manifest.base_model
    assert manifest.recipe_hash == run.adapter.recipe.hash
    assert manifest.datanet_roots == (snapshot.root,)
    assert manifest.training_log_root == run.adapter.training_log().root
    protocol = connect().deploy_protocol()
    protocol.models.register_model(manifest, 25)
    registrant = protocol.chain.default_account.address
    assert protocol.models.model_id_of(manifest, registrant) == model_id(manifest, registrant)
    assert protocol.models.is_registered(model_id(manifest, registrant))


def test_the_log_holds_snapshot_records_four_per_step(run: TrainingRun, snapshot: Snapshot) -> None:
    log = Adapter.open(run.output_dir).training_log()
    assert [s.step for s in log.steps] == list(range(1, 81))
    assert all(len(s.record_hashes) == 4 for s in log.steps)
    counts = log.record_counts()
    assert set(counts) == set(snapshot.record_hashes())
    assert set(counts.values()) == {40}  # 80 steps x 4 / 8 records: every record every epoch


def test_an_altered_weights_file_is_caught(run: TrainingRun, tmp_path: Path) -> None:
    import shutil

    copy = Path(
        shutil.copytree(
            run.output_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("checkpoints")
        )
    )
    weights = copy / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="adapter_id"):
        Adapter.open(copy)


def test_evaluate_reports_the_memorised_answers(run: TrainingRun, colour_records: Records) -> None:
    report = evaluate(run.output_dir, colour_records(3), num_generate=3, max_new_tokens=12)
    assert report.loss < 0.05 < report.base_loss
    assert report.perplexity == pytest.approx(2.718281828**report.loss)
    assert (report.exact_match, report.rouge_l) == (1.0, 1.0)
    assert report.base_exact_match == 0.0
    assert [s.adapter for s in report.samples] == ["RED ok.", "BLUE ok.", "GREEN ok."]
    assert "<table>" in report._repr_html_()


def test_merge_and_save_gives_the_adapter_logits(run: TrainingRun, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    folder = merge_and_save(run.output_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = run.tokenizer("<|im_start|>user\nCode navy?<|im_end|>\n", return_tensors="pt")
    with torch.no_grad():
        assert_logits_close(merged(**ids).logits, run.model(**ids).logits, merged.config)
    note = json.loads((folder / "openledger_merge.json").read_text())
    assert note["adapter_id"] == run.adapter.id
