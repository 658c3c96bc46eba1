"""``modules_to_save`` and DoRA adapters: what is refused (with what message), the bound on
whole-head copies, and PEFT's tied-weight variant served as PEFT serves it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.serve.serve_lora_factory import make_peft_adapter, peft_generate  # noqa: E402

from openledger.exceptions import (  # noqa: E402
    AdapterCapacityError,
    AdapterFormatError,
    AdapterMismatchError,
    ConfigError,
    InvalidRequestError,
)
from openledger.models import save_tiny_model  # noqa: E402
from openledger.serve import Engine, EngineConfig, SamplingParams  # noqa: E402
from openledger.serve.adapters import AdapterStore  # noqa: E402
from openledger.serve.layers.lora import LoraState  # noqa: E402
from openledger.serve.models.config import ModelConfig  # noqa: E402

NEW = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saved-modules")
    base = save_tiny_model(root / "base", "llama", seed=4, tie_word_embeddings=True)
    return {
        "base": base,
        "dora": make_peft_adapter(base, root / "dora", r=4, targets=["q_proj"], seed=1,
                                  use_dora=True),
        "plain": make_peft_adapter(base, root / "plain", r=2, targets=["o_proj"], seed=2),
        "head": make_peft_adapter(base, root / "head", r=2, targets=["v_proj"], seed=3,
                                  modules_to_save=["lm_head"]),
        "embed": make_peft_adapter(base, root / "embed", r=2, targets=["k_proj"], seed=4,
                                   modules_to_save=["embed_tokens"]),
        "tied": make_peft_adapter(base, root / "tied", r=2, targets=["q_proj"], seed=5,
                                  modules_to_save=["embed_tokens"], ensure_weight_tying=True),
    }  # fmt: skip


def engine_of(setup: dict[str, Path], **config: Any) -> Engine:
    return Engine(setup["base"], EngineConfig(max_num_seqs=2, block_size=4, **config))


def edited(folder: Path, target: Path, **fields: Any) -> Path:
    import shutil

    copy = Path(shutil.copytree(folder, target))
    config = json.loads((copy / "adapter_config.json").read_text())
    config.update(fields)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


def test_modules_to_save_of_another_module_is_refused(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    engine = engine_of(setup)
    score = edited(setup["head"], tmp_path / "score", modules_to_save=["lm_head", "score"])
    with pytest.raises(AdapterFormatError, match=r"modules_to_save names 'score'.*lm_head"):
        engine.add_adapter("score", score)
    missing = edited(setup["plain"], tmp_path / "missing", modules_to_save=["lm_head"])
    with pytest.raises(AdapterMismatchError, match=r"modules_to_save lists \['lm_head'\]"):
        engine.add_adapter("missing", missing)
    unlisted = edited(setup["head"], tmp_path / "unlisted", modules_to_save=None)
    with pytest.raises(AdapterMismatchError, match=r"lm_head\.weight' targets no served"):
        engine.add_adapter("unlisted", unlisted)
    biased = edited(setup["dora"], tmp_path / "biased", lora_bias=True)
    with pytest.raises(AdapterFormatError, match="lora_bias"):
        engine.add_adapter("biased", biased)
    no_magnitude = edited(setup["plain"], tmp_path / "no-magnitude", use_dora=True)
    with pytest.raises(AdapterMismatchError, match="lora_magnitude_vector has shape None"):
        engine.add_adapter("no-magnitude", no_magnitude)
    assert engine.adapters is not None
    assert len(engine.adapters) == 0


def test_head_copies_are_bounded(setup: dict[str, Path]) -> None:
    engine = engine_of(setup, max_adapter_heads=1)
    engine.add_adapter("head", setup["head"])
    engine.add_adapter("plain", setup["plain"])  # NOTE: adapters without copies don't count
    with pytest.raises(AdapterCapacityError, match=r"registered \(head\).*max_adapter_heads"):
        engine.add_adapter("embed", setup["embed"])
    engine.remove_adapter("head")
    engine.add_adapter("embed", setup["embed"])
    assert engine.generate([1, 2, 3], SamplingParams(max_tokens=2, adapter="embed"))[0].token_ids


def test_dora_and_saved_modules_refuse_mixes_and_merges(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    engine = engine_of(setup)
    for name in ("dora", "plain", "head"):
        engine.add_adapter(name, setup[name])
    with pytest.raises(InvalidRequestError, match=r"'dora' is a DoRA adapter.*weighted mix"):
        engine.add_request([1, 2], SamplingParams(adapter={"dora": 0.5, "plain": 0.5}))
    with pytest.raises(InvalidRequestError, match="'head' is a modules_to_save adapter"):
        engine.add_request([1, 2], SamplingParams(adapter={"head": 1.0}))
    with pytest.raises(ConfigError, match="'dora' is a DoRA adapter: merging is refused"):
        engine.merge_adapters("m", {"dora": 1.0, "plain": 1.0}, output_dir=tmp_path / "m")
    with pytest.raises(ConfigError, match=r"'head' is saving \['lm_head'\]"):
        engine.merge_adapters("m", {"plain": 1.0, "head": 1.0}, output_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_dora_needs_the_base_weights(setup: dict[str, Path]) -> None:
    config = ModelConfig.from_folder(setup["base"])
    names = [f"layers.{i}.self_attn.qkv_proj" for i in range(config.num_layers)]
    store = AdapterStore(
        config, LoraState(names, 2), dtype=torch.float32, device=torch.device("cpu")
    )
    spec = store.add("dora", setup["dora"])
    assert spec.use_dora
    assert spec.saved_modules == frozenset()
    with pytest.raises(AdapterFormatError, match=r"'dora' is a DoRA adapter.*base weights"):
        store.load_host("dora")


def test_tied_copies_are_served_as_peft_serves_them(setup: dict[str, Path]) -> None:
    """PEFT's ``ensure_weight_tying`` saves both copies of a tied pair (and lists the
    embedding as ``model.embed_tokens``): both are served; without it, a tied base keeps
    its own head while the adapter's embedding copy changes the input only."""
    engine = engine_of(setup, max_adapter_heads=3)
    spec = engine.add_adapter("tied", setup["tied"])
    assert spec.saved_modules == {"lm_head", "embed_tokens"}
    assert engine.add_adapter("embed", setup["embed"]).saved_modules == {"embed_tokens"}
    assert engine.add_adapter("head", setup["head"]).saved_modules == {"lm_head"}
    prompt = [5, 9, 30, 7, 200, 11]
    names = ["tied", "embed", "head"]
    outputs = engine.generate(
        [prompt] * 3, [SamplingParams(max_tokens=NEW, min_tokens=NEW, adapter=n) for n in names]
    )
    for name, output in zip(names, outputs, strict=True):
        assert output.token_ids == peft_generate(setup["base"], setup[name], prompt, NEW)[0], name
