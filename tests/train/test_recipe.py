"""LoraRecipe: round trips, the stable hash, and validation that names the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from openledger.exceptions import RecipeError
from openledger.train import LoraRecipe

FULL = LoraRecipe(
    base_model="smollm2-135m-instruct",
    r=16,
    alpha=32,
    dropout=0.1,
    target_modules=["q_proj", "v_proj"],
    use_rslora=True,
    init="gaussian",
    loraplus_lr_ratio=16.0,
    learning_rate=1e-4,
    epochs=2,
    batch_size=8,
    gradient_accumulation=2,
    max_length=256,
    warmup_ratio=0.1,
    scheduler="cosine",
    seed=7,
    eval_split=0.1,
    eval_steps=5,
    early_stopping_patience=2,
    chat_template="{{ messages }}",
    packing=True,
)


def test_yaml_and_json_round_trip() -> None:
    assert LoraRecipe.from_yaml(FULL.to_yaml()) == FULL
    assert LoraRecipe.from_json(FULL.to_json()) == FULL
    assert LoraRecipe.from_dict(FULL.to_dict()) == FULL


@pytest.mark.parametrize("name", ["recipe.yaml", "recipe.yml", "recipe.json"])
def test_file_round_trip_by_suffix(tmp_path: Path, name: str) -> None:
    path = FULL.save(tmp_path / name)
    assert LoraRecipe.load(path) == FULL
    assert path.read_text().lstrip().startswith("{") == name.endswith(".json")


def test_hash_is_pinned() -> None:
    # NOTE: pinned on purpose: the recipe hash is stored in manifests, so its encoding
    # (format tag, JSON canonical form, field set and defaults) must not drift silently.
    recipe = LoraRecipe(base_model="smollm2-135m-instruct")
    assert recipe.hash == "0x" + PINNED_DEFAULT_HASH


PINNED_DEFAULT_HASH = "1368ff86c57b2cc93d3360d361559a301a63f303693f9fc1fcb8b9afc15b8f7b"


def test_hash_ignores_key_order_and_follows_every_field() -> None:
    reordered = LoraRecipe.from_dict(dict(reversed(list(FULL.to_dict().items()))))
    assert reordered.hash == FULL.hash
    assert FULL.replace(r=8).hash != FULL.hash
    assert FULL.replace(packing=False).hash != FULL.hash
    assert FULL.replace(target_modules="all-linear").hash != FULL.hash


def test_a_single_module_name_becomes_a_list() -> None:
    recipe = LoraRecipe(base_model="m", target_modules="q_proj")
    assert recipe.target_modules == ("q_proj",)
    assert recipe.to_dict()["target_modules"] == ["q_proj"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"r": 0}, "'r'"),
        ({"dropout": 1.5}, "'dropout'"),
        ({"learning_rate": -1}, "'learning_rate'"),
        ({"quantization": "3bit"}, "'quantization'"),
        ({"init": "kaiming"}, "'init'"),
        ({"scheduler": "warp"}, "'scheduler'"),
        ({"target_modules": []}, "'target_modules'"),
        ({"batch_size": 0}, "'batch_size'"),
        ({"eval_split": 1.0}, "'eval_split'"),
        ({"rank": 8}, "'rank': is not among the recipe fields"),
        ({"early_stopping_patience": 2}, "early_stopping_patience needs eval_split"),
        ({"init": "loftq", "quantization": "4bit"}, "init='loftq'"),
        ({"use_dora": True, "init": "pissa"}, "use_dora"),
    ],
)
def test_validation_names_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(RecipeError, match=named):
        LoraRecipe.from_dict({"base_model": "m", **fields})
    with pytest.raises(RecipeError, match=named):
        LoraRecipe(base_model="m", **fields)


def test_missing_base_model_is_named() -> None:
    with pytest.raises(RecipeError, match="'base_model'"):
        LoraRecipe.from_dict({"r": 8})


@pytest.mark.parametrize(
    ("loader", "text"),
    [(LoraRecipe.from_yaml, "r: [unclosed"), (LoraRecipe.from_json, "{not json")],
)
def test_malformed_text_is_a_recipe_error(loader: object, text: str) -> None:
    with pytest.raises(RecipeError, match="not valid"):
        loader(text)  # type: ignore[operator]


def test_a_non_mapping_and_a_missing_file_are_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="mapping"):
        LoraRecipe.from_yaml("- a\n- b\n")
    with pytest.raises(RecipeError, match="cannot read"):
        LoraRecipe.load(tmp_path / "absent.yaml")


def test_recipe_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="'alpha'"):
        LoraRecipe(base_model="m", alpha=0)


def test_hash_follows_the_documented_encoding() -> None:
    import json

    from openledger.crypto import keccak256

    body = {"format": "openledger.lora_recipe/1", "recipe": FULL.model_dump(mode="json")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert FULL.hash == "0x" + keccak256(text.encode("utf-8")).hex()
