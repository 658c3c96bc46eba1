"""Packing and collation, and that packed rows compute what separate rows compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.numerics import assert_logits_close

from openledger.train.batching import collate, pack_examples
from openledger.train.formatting import IGNORE_INDEX, Example


def example(index: int, length: int) -> Example:
    ids = tuple(range(10 + index, 10 + index + length))
    return Example(ids, (IGNORE_INDEX, *ids[1:]), (index,))


def test_packing_keeps_order_never_splits_and_respects_the_limit() -> None:
    examples = [example(i, n) for i, n in enumerate([5, 4, 3, 8, 1, 2])]
    packed = pack_examples(examples, max_length=9)
    assert [p.records for p in packed] == [(0, 1), (2,), (3, 4), (5,)]
    assert all(len(p) <= 9 for p in packed)
    assert packed[0].input_ids == examples[0].input_ids + examples[1].input_ids
    assert packed[0].position_ids == (0, 1, 2, 3, 4, 0, 1, 2, 3)


def test_collate_pads_right_and_carries_provenance() -> None:
    batch = collate([example(0, 3), example(1, 5)], pad_token_id=2)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 2, 2], [11, 12, 13, 14, 15]]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 11, 12, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["record_ids"].tolist() == [[0], [1]]
    assert batch["num_tokens"].tolist() == [3, 5]
    packed = collate(pack_examples([example(0, 2), example(1, 2), example(2, 3)], 4), 2)
    assert packed["record_ids"].tolist() == [[0, 1], [2, -1]]
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 2, 0]]
    assert "attention_mask" not in packed


def test_packed_examples_do_not_attend_to_each_other(memorising_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(memorising_llama_dir).eval()
    examples = [example(0, 6), example(1, 4), example(2, 5)]
    packed = collate(pack_examples(examples, max_length=32), pad_token_id=2)
    with torch.no_grad():
        # NOTE: training runs with use_cache=False (see modeling.load_for_training); with a
        # cache transformers ignores packed position ids when building the mask.
        together = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
        offset = 0
        for e in examples:
            alone = model(input_ids=torch.tensor([e.input_ids])).logits
            got = together[:, offset : offset + len(e)]
            assert_logits_close(got, alone, model.config)
            offset += len(e)


@pytest.mark.parametrize("width", [1, 3])
def test_collate_of_one_example(width: int) -> None:
    batch = collate([example(0, width)], pad_token_id=0)
    assert batch["input_ids"].shape == (1, width)
