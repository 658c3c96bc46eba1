"""The fast influence index: 16-bit passes and 16-bit rows against the float32 reference."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.attribution.conftest import random_example, random_lora_model
from tests.attribution.test_attribution_quality import pearson
from tests.numerics import backward_terms, gamma, unit_roundoff

from openledger.attribution import InfluenceIndex
from openledger.attribution.batched import batch_gradients
from openledger.attribution.gradients import Projector, example_gradient
from openledger.attribution.storage import load_rows, new_rows, put_rows, rows_tensor
from openledger.crypto import Account
from openledger.data import Snapshot
from openledger.exceptions import AttributionInputError
from openledger.train import TrainingRun

Example = tuple[list[int], list[int]]
Run = tuple[Snapshot, TrainingRun, list[Account]]
QUERIES = [("Code red?", "RED ok."), ("Code teal?", "TEAL ok."), ("Code navy?", "NAVY ok.")]


@pytest.fixture(scope="module", params=[1, 4, 8], ids=lambda r: f"rank{r}")
def lora_model(tiny_llama_dir: Path, request: pytest.FixtureRequest) -> tuple[Any, list[Any]]:
    """A tiny Llama with random, non-zero LoRA factors of rank ``request.param``."""
    return random_lora_model(tiny_llama_dir, rank=request.param, seed=request.param)


example = random_example


# different lengths in one batch: the shorter ones are padded
MIXED = [example(5, 2, 0), example(17, 9, 1), example(2, 1, 2), example(11, 0, 3)]


def probabilistic_gamma(terms: int, dtype: torch.dtype, confidence: float = 6.0) -> float:
    """The probabilistic rounding bound of a chain of ``terms`` sums (Higham and Mary, 2019):
    ``exp(c sqrt(n) u + n u^2 / (1 - u)) - 1``, exceeded with probability below
    ``2 exp(-c^2 (1 - u)^2 / 2)`` (here ``c = 6``: ~3e-8) for independent rounding errors.
    """
    u = unit_roundoff(dtype)
    return math.expm1(confidence * math.sqrt(terms) * u + terms * u * u / (1 - u))


@pytest.mark.parametrize("dim", [None, 8])
def test_bfloat16_passes_give_the_per_record_rows_within_bfloat16_rounding(
    lora_model: tuple[Any, list[Any]], dim: int | None
) -> None:
    model, pairs = lora_model
    projector = Projector(dim, seed=2)
    expected = torch.stack([example_gradient(model, pairs, projector, *e) for e in MIXED])
    found = batch_gradients(model, pairs, projector, MIXED, compute_dtype="bfloat16")
    assert found.dtype == torch.float32
    assert found.shape == expected.shape
    # the passes are rounded to bfloat16; the projection and the sums over tokens are float32
    terms = backward_terms(model.config, 17)
    widest = max(model.config.hidden_size, model.config.intermediate_size)
    allowed = probabilistic_gamma(terms, torch.bfloat16) + gamma(widest + 17, torch.float32)
    assert allowed < 1, "the bound says nothing at this size"
    errors = (found.double() - expected.double()).norm(dim=1) / expected.double().norm(dim=1)
    assert float(errors.max()) <= allowed, f"rows off by {errors.tolist()}, bound {allowed:.3g}"
    # the passes did run in bfloat16: float32 passes agree far more closely
    assert float(errors.max()) > gamma(terms, torch.float32)


def test_an_unknown_compute_dtype_is_refused(lora_model: tuple[Any, list[Any]]) -> None:
    model, pairs = lora_model
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        batch_gradients(model, pairs, Projector(None), MIXED, compute_dtype="int8")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_rows_round_trip_within_one_rounding(tmp_path: Path, dtype: str) -> None:
    block = torch.randn(6, 40, generator=torch.Generator().manual_seed(0)) * 1e-3
    rows = new_rows(tmp_path / "rows.npy", (8, 40), dtype)
    put_rows(rows, np.asarray([5, 0, 2, 7, 1, 3]), block, dtype)
    rows.flush()
    del rows
    found = load_rows(tmp_path / "rows.npy", dtype)
    assert found.dtype == getattr(torch, dtype)
    back = found[[5, 0, 2, 7, 1, 3]].float()
    u = unit_roundoff(getattr(torch, dtype))
    # below the smallest normal number the rounding is absolute (half a subnormal step)
    floor = u * torch.finfo(getattr(torch, dtype)).smallest_normal
    assert bool(((back - block).abs() <= u * block.abs() + floor).all())
    assert bool((found[[4, 6]] == 0).all())
    assert bool((back == block.to(getattr(torch, dtype)).float()).all())  # round to nearest


def test_float16_rows_that_overflow_are_refused() -> None:
    rows = new_rows(None, (1, 3), "float16")
    with pytest.raises(AttributionInputError, match="float16's range"):
        put_rows(rows, np.asarray([0]), torch.tensor([[1.0, 7e4, 2.0]]), "float16")
    with pytest.raises(AttributionInputError, match="storage_dtype must be one of"):
        rows_tensor(rows, "float8")


def test_a_16_bit_index_scores_as_the_float32_one_within_one_rounding_per_row(
    colour_run: Run, tmp_path: Path
) -> None:
    snapshot, run, _ = colour_run
    wide = InfluenceIndex.build(run.adapter, snapshot, "tracin", projection_dim=16)
    narrow = InfluenceIndex.build(
        run.adapter,
        snapshot,
        "tracin",
        projection_dim=16,
        output_dir=tmp_path / "idx",
        storage_dtype="bfloat16",
    )
    assert narrow.manifest.storage_dtype == "bfloat16"
    assert narrow.grads[0].dtype == torch.bfloat16
    size = (tmp_path / "idx" / "gradients-0.npy").stat().st_size
    assert 2 * len(narrow) * narrow.width <= size < 4 * len(narrow) * narrow.width
    rows = wide.grads[0]
    assert bool((narrow.grads[0] == rows.to(torch.bfloat16)).all())  # same passes, rounded
    again = InfluenceIndex.load(tmp_path / "idx", run.adapter.path)
    eta = run.adapter.recipe.learning_rate
    for prompt, answer in QUERIES:
        q = wide.query_gradients(prompt, answer)[0]
        want = torch.tensor([r.score for r in wide.attribute(prompt, answer).records])
        got = torch.tensor([r.score for r in again.attribute(prompt, answer).records])
        # each stored value rounded once (u), then float32 products summed over the row
        magnitude = eta * (rows.double().abs() @ q.double().abs())
        allowed = (unit_roundoff(torch.bfloat16) + 2 * gamma(rows.shape[1], torch.float32)) * (
            magnitude
        )
        assert bool(((got - want).abs() <= allowed).all())
        assert float((got - want).abs().max()) > 0  # 16-bit rows were scored


def test_a_format_2_index_still_loads_and_a_damaged_one_is_refused(
    colour_run: Run, tmp_path: Path
) -> None:
    snapshot, run, _ = colour_run
    index = InfluenceIndex.build(
        run.adapter, snapshot, "datainf", projection_dim=8, output_dir=tmp_path / "idx"
    )
    manifest = tmp_path / "idx" / "index.json"
    raw = json.loads(manifest.read_text())
    assert raw["format"] == "openledger.influence_index/3"
    assert raw["storage_dtype"] == raw["compute_dtype"] == "float32"
    older = {k: v for k, v in raw.items() if k not in ("storage_dtype", "compute_dtype")}
    manifest.write_text(json.dumps({**older, "format": "openledger.influence_index/2"}))
    loaded = InfluenceIndex.load(tmp_path / "idx", run.adapter.path)
    assert loaded.attribute(*QUERIES[0]).scores() == pytest.approx(
        index.attribute(*QUERIES[0]).scores()
    )
    manifest.write_text(json.dumps({**raw, "storage_dtype": "bfloat16"}))
    with pytest.raises(AttributionInputError, match="holds float32 values"):
        InfluenceIndex.load(tmp_path / "idx", run.adapter.path)
    manifest.write_text(json.dumps({**raw, "format": "openledger.influence_index/1"}))
    with pytest.raises(AttributionInputError, match="not an influence index"):
        InfluenceIndex.load(tmp_path / "idx", run.adapter.path)
    for bad in ({"storage_dtype": "float64"}, {"compute_dtype": "fp8"}):
        with pytest.raises(AttributionInputError, match="must be one of"):
            InfluenceIndex.build(run.adapter, snapshot, **bad)  # type: ignore[arg-type]


def test_bfloat16_rows_score_as_the_float32_ones(colour_run: Run) -> None:
    """bfloat16 rows of float32 passes against float32 rows (which equal the per-record
    reference's: test_attribution_batched): Pearson >= 0.99, the issue's tolerance. (bfloat16
    passes are held to their rounding bound above; on SmolLM2 their DataInf scores fell
    below this tolerance: benchmarks/RESULTS.md.)"""
    snapshot, run, _ = colour_run
    reference = InfluenceIndex.build(run.adapter, snapshot, "datainf")
    narrow = InfluenceIndex.build(run.adapter, snapshot, "datainf", storage_dtype="bfloat16")
    passes = InfluenceIndex.build(run.adapter, snapshot, "datainf", compute_dtype="bfloat16")
    assert passes.manifest.compute_dtype == "bfloat16"
    for prompt, answer in QUERIES:
        want = [r.score for r in reference.attribute(prompt, answer).records]
        got = [r.score for r in narrow.attribute(prompt, answer).records]
        assert pearson(got, want) >= 0.99
        assert got != want
        # the index's queries take its own passes: bfloat16 ones differ from float32's
        q16, q32 = (
            passes.query_gradients(prompt, answer)[0],
            reference.query_gradients(prompt, answer)[0],
        )
        assert not torch.equal(q16, q32)


def test_projected_scores_follow_the_unprojected_ones(colour_run: Run) -> None:
    """A projection as wide as the smaller factor side keeps ``datainf``'s scores
    (Pearson >= 0.99); a narrow one keeps their sign pattern roughly."""
    snapshot, run, _ = colour_run
    whole = InfluenceIndex.build(run.adapter, snapshot, "datainf")
    wide = InfluenceIndex.build(run.adapter, snapshot, "datainf", projection_dim=32)
    assert wide.width < whole.width
    for prompt, answer in QUERIES:
        want = [r.score for r in whole.attribute(prompt, answer).records]
        got = [r.score for r in wide.attribute(prompt, answer).records]
        assert pearson(got, want) >= 0.99
