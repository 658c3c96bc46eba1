"""Batched per-example gradients against the per-record path (one backward per example)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.attribution.conftest import random_example, random_lora_model
from tests.numerics import assert_rows_close, backward_terms

from openledger.attribution import InfluenceIndex
from openledger.attribution.batched import batch_gradients, iter_batch_gradients, length_batches
from openledger.attribution.gradients import Projector, example_gradient
from openledger.crypto import Account
from openledger.data import Snapshot
from openledger.exceptions import AttributionInputError
from openledger.train import TrainingRun

Example = tuple[list[int], list[int]]


@pytest.fixture(scope="module")
def lora_model(tiny_llama_dir: Path) -> tuple[Any, list[Any]]:
    """A tiny Llama with random, non-zero LoRA factors on attention and MLP projections."""
    return random_lora_model(tiny_llama_dir, rank=4, seed=0)


example = random_example


def reference(model: Any, pairs: list[Any], projector: Projector, examples: list[Example]) -> Any:
    return torch.stack([example_gradient(model, pairs, projector, *e) for e in examples])


MIXED = [example(5, 2, 0), example(17, 9, 1), example(2, 1, 2), example(11, 0, 3)]


@pytest.mark.parametrize("dim", [None, 8, 4096])  # whole; in/out sides projected; dim > sides
def test_one_batch_equals_one_backward_per_example(
    lora_model: tuple[Any, list[Any]], dim: int | None
) -> None:
    model, pairs = lora_model
    projector = Projector(dim, seed=3)
    expected = reference(model, pairs, projector, MIXED)
    found = batch_gradients(model, pairs, projector, MIXED)
    assert found.shape == expected.shape
    assert found.dtype == torch.float32
    terms = backward_terms(model.config, 17, projected=dim is not None)
    assert_rows_close(found, expected, dtype=torch.float32, terms=terms)
    assert float(found.abs().max()) > 1e-3  # the comparison is not between zeros


@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 14), min_size=1, max_size=6),
    budget=st.integers(1, 40),
    data=st.data(),
)
def test_batches_of_any_size_give_the_per_example_rows(
    lora_model: tuple[Any, list[Any]], lengths: list[int], budget: int, data: Any
) -> None:
    model, pairs = lora_model
    starts = [data.draw(st.integers(0, n - 2)) for n in lengths]
    pairs_of = enumerate(zip(lengths, starts, strict=True))
    examples = [example(n, s, seed) for seed, (n, s) in pairs_of]
    projector = Projector(8, seed=1)
    expected = reference(model, pairs, projector, examples)
    found = torch.zeros_like(expected)
    seen: list[int] = []
    for indices, rows in iter_batch_gradients(model, pairs, projector, examples, budget):
        found[indices] = rows
        seen += indices
    assert sorted(seen) == list(range(len(examples)))
    terms = backward_terms(model.config, max(lengths), projected=True)
    assert_rows_close(found, expected, dtype=torch.float32, terms=terms)


@given(lengths=st.lists(st.integers(1, 50), max_size=30), budget=st.integers(1, 200))
def test_length_batches_cover_every_index_once_within_the_budget(
    lengths: list[int], budget: int
) -> None:
    batches = length_batches(lengths, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or longest * len(batch) <= budget
        assert [lengths[i] for i in batch] == sorted(lengths[i] for i in batch)


def test_bad_batches_are_refused(lora_model: tuple[Any, list[Any]]) -> None:
    model, pairs = lora_model
    with pytest.raises(ValueError, match="no example"):
        batch_gradients(model, pairs, Projector(None), [])
    with pytest.raises(ValueError, match="no learnt token"):
        batch_gradients(model, pairs, Projector(None), [MIXED[0], ([5, 6, 7], [5, -100, -100])])


Run = tuple[Snapshot, TrainingRun, list[Account]]


def test_index_rows_do_not_depend_on_the_batch_budget(colour_run: Run) -> None:
    snapshot, run, _ = colour_run
    one = InfluenceIndex.build(run.adapter, snapshot, projection_dim=8, batch_tokens=1)
    many = InfluenceIndex.build(run.adapter, snapshot, projection_dim=8, batch_tokens=4096)
    model, _ = run.adapter.load(dtype="float32", device="cpu")
    terms = backward_terms(model.config, run.adapter.recipe.max_length, projected=True)
    assert_rows_close(one.grads[0], many.grads[0], dtype=torch.float32, terms=terms)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(AttributionInputError, match="batch_tokens"):
            InfluenceIndex.build(run.adapter, snapshot, batch_tokens=bad)  # type: ignore[arg-type]
