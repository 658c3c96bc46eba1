"""The public surface of openledger.train, pinned."""

from __future__ import annotations

import openledger
import openledger.train

PUBLIC = [
    "ADAPTER_WEIGHTS_FILE",
    "IGNORE_INDEX",
    "MANIFEST_FILE",
    "TRAINING_LOG_FILE",
    "TRAINING_LOG_LEAF_ENCODING",
    "Adapter",
    "AdapterManifest",
    "EvalReport",
    "LoraRecipe",
    "Sample",
    "StepRecord",
    "TrainingData",
    "TrainingLog",
    "TrainingRun",
    "adapter_id",
    "check_eos",
    "evaluate",
    "finetune",
    "format_record",
    "load_training_data",
    "merge_and_save",
    "record_messages",
    "rouge_l",
    "step_commitment",
    "verify_step",
    "weights_hash",
]


def test_public_api_is_pinned() -> None:
    assert sorted(openledger.train.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(openledger.train, name), name


def test_the_layer_loads_lazily_from_the_package() -> None:
    assert "train" in openledger.__all__
    assert openledger.__getattr__("train") is openledger.train


def test_rouge_l_by_hand() -> None:
    from openledger.train import rouge_l

    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("a b c d", "a c") == 2 * (2 / 4) * (2 / 2) / (2 / 4 + 2 / 2)
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("", "") == 1.0
