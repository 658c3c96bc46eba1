"""Influence against slow, obvious references: explicit per-example loops and inverses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.attribution.conftest import recipe
from tests.numerics import (
    abs_products,
    assert_rows_close,
    assert_within,
    assert_within_rounding,
    backward_terms,
    gamma,
)

from openledger.attribution import GradientLayout, InfluenceIndex, Projector
from openledger.attribution.examples import query_example, training_examples
from openledger.attribution.influence import make_scorer
from openledger.crypto import Account
from openledger.data import Snapshot
from openledger.exceptions import AttributionInputError
from openledger.train import Adapter, TrainingRun

Run = tuple[Snapshot, TrainingRun, list[Account]]


def synthetic(count: int, widths: list[int], seed: int = 0) -> tuple[torch.Tensor, GradientLayout]:
    generator = torch.Generator().manual_seed(seed)
    offsets = [0]
    for width in widths:
        offsets.append(offsets[-1] + width)
    grads = torch.randn(count, offsets[-1], generator=generator, dtype=torch.float64)
    layout = GradientLayout(tuple(f"layer{i}" for i in range(len(widths))), tuple(offsets))
    return grads.float(), layout


def damping(g: torch.Tensor, scale: float = 0.1) -> float:
    return scale * sum(float(row @ row) for row in g) / (g.shape[0] * g.shape[1])


def damped_condition(g: torch.Tensor) -> float:
    """Condition number of the damped Fisher ``g^T g / n + lambda I`` the scorers solve."""
    g = g.double()
    fisher = g.T @ g / g.shape[0] + damping(g) * torch.eye(g.shape[1], dtype=torch.float64)
    return float(torch.linalg.cond(fisher))


def assert_scores_close(
    found: torch.Tensor, expected: torch.Tensor, grads: torch.Tensor, layout: GradientLayout
) -> None:
    """Scorers multiply float32 rows in float32 (dot products over a layer's width) and
    solve in float64: the products' rounding grows by the damped Fisher's condition number
    (float64 references here)."""
    bound = max(
        damped_condition(grads[:, part]) * gamma(part.stop - part.start + 1, torch.float32)
        for part in layout.slices()
    )
    error = float((found.double() - expected.double()).norm() / expected.double().norm())
    assert error <= bound, f"scores off by {error:.3e} relative, bound {bound:.3e}"


def exact_reference(grads: torch.Tensor, layout: GradientLayout, q: torch.Tensor) -> torch.Tensor:
    """sum_l g_il^T (sum_j g_jl g_jl^T / n + lambda_l I)^-1 q_l, with an explicit inverse."""
    scores = torch.zeros(grads.shape[0], dtype=torch.float64)
    for part in layout.slices():
        g, ql = grads[:, part].double(), q[part].double()
        fisher = sum(torch.outer(row, row) for row in g) / g.shape[0]
        inverse = torch.linalg.inv(fisher + damping(g) * torch.eye(g.shape[1], dtype=g.dtype))
        scores += torch.stack([row @ inverse @ ql for row in g])
    return scores


def datainf_reference(grads: torch.Tensor, layout: GradientLayout, q: torch.Tensor) -> torch.Tensor:
    """DataInf's inverse written out: (1/(n lam)) sum_j (I - g_j g_j^T / (lam + |g_j|^2))."""
    scores = torch.zeros(grads.shape[0], dtype=torch.float64)
    for part in layout.slices():
        g, ql = grads[:, part].double(), q[part].double()
        lam, eye = damping(g), torch.eye(g.shape[1], dtype=torch.float64)
        terms = [eye - torch.outer(row, row) / (lam + row @ row) for row in g]
        inverse = sum(terms) / (g.shape[0] * lam)
        scores += torch.stack([row @ inverse @ ql for row in g])
    return scores


@pytest.mark.parametrize("count", [40, 6])  # d <= n (Cholesky of d x d) and d > n (Woodbury)
def test_exact_matches_an_explicit_inverse(count: int) -> None:
    grads, layout = synthetic(count, [12, 20])
    query = torch.randn(32, generator=torch.Generator().manual_seed(7))
    found = make_scorer("exact", [grads], layout).scores([query])
    assert_scores_close(found, exact_reference(grads, layout, query), grads, layout)


def test_datainf_matches_its_written_out_inverse() -> None:
    grads, layout = synthetic(9, [10, 14])
    query = torch.randn(24, generator=torch.Generator().manual_seed(3))
    found = make_scorer("datainf", [grads], layout).scores([query])
    assert_scores_close(found, datainf_reference(grads, layout, query), grads, layout)


def test_tracin_and_gradcos_match_per_example_loops() -> None:
    first, layout = synthetic(5, [8])
    second, _ = synthetic(5, [8], seed=1)
    q1, q2 = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    tracin = make_scorer("tracin", [first, second], layout, learning_rates=[0.1, 0.01])
    pairs = zip(first.double(), second.double(), strict=True)
    expected = torch.stack([0.1 * (a @ q1) + 0.01 * (b @ q2) for a, b in pairs])
    # float32 dot products of 8 terms (plus the query's rounding to float32), against float64
    sizes = 0.1 * abs_products(first, q1[None]) + 0.01 * abs_products(second, q2[None])
    found = tracin.scores([q1, q2])
    assert_within_rounding(found, expected, bound=sizes[:, 0], dtype=torch.float32, terms=10)
    cos = make_scorer("gradcos", [first], layout).scores([q1])
    expected = torch.stack([torch.cosine_similarity(a.double(), q1, dim=0) for a in first])
    # |cos| <= 1; a dot product and two norms of 8 terms, a division
    assert_within_rounding(cos, expected, bound=3.0, dtype=torch.float32, terms=10)


@pytest.mark.parametrize("method", ["exact", "datainf", "gradcos"])
def test_scores_follow_the_examples_when_they_are_reordered(method: str) -> None:
    grads, layout = synthetic(7, [6, 9])
    query = torch.randn(15)
    order = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    base = make_scorer(method, [grads], layout).scores([query])
    moved = make_scorer(method, [grads[order]], layout).scores([query])
    if method == "gradcos":  # a dot product and two norms of 15 terms per score, |cos| <= 1
        assert_within_rounding(moved, base[order], bound=3.0, dtype=torch.float32, terms=17)
    else:  # both sides rounded the same way: twice the bound
        assert_scores_close(moved, base[order], grads, layout)
        assert_scores_close(base[order], moved, grads, layout)


def test_projection_keeps_short_sides_and_preserves_inner_products_roughly() -> None:
    whole = Projector(None)
    grad_a, grad_b = torch.randn(2, 300), torch.randn(300, 2)
    flat = whole.project(grad_a, grad_b)
    torch.testing.assert_close(flat, torch.cat([grad_a.reshape(-1), grad_b.reshape(-1)]))
    projected = Projector(256, seed=5)
    other_a, other_b = grad_a + 0.5 * torch.randn(2, 300), grad_b + 0.5 * torch.randn(300, 2)
    exact = float(flat @ whole.project(other_a, other_b))
    approx = float(projected.project(grad_a, grad_b) @ projected.project(other_a, other_b))
    assert approx == pytest.approx(exact, rel=0.25)
    assert projected.project(grad_a, grad_b).shape == (2 * 2 * 256,)
    assert Projector(512).matrix(300) is None


Pair = tuple[list[int], list[int]]


def naive_gradients(adapter: Adapter, pairs: list[Pair]) -> torch.Tensor:
    """Per-example LoRA gradients through transformers' own loss, one backward each."""
    model, _ = adapter.load(dtype="float32", device="cpu")
    return loop_gradients(model, pairs)


def loop_gradients(model: Any, pairs: list[Pair]) -> torch.Tensor:
    """One forward and backward per example; LoRA gradients in parameter order."""
    params = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    for _, p in params:
        p.requires_grad_(True)
    rows = []
    for ids, labels in pairs:
        model.zero_grad()
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        out.loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for _, p in params]))
    return torch.stack(rows)


def test_index_gradients_and_scores_match_a_naive_loop(colour_run: Run) -> None:
    snapshot, run, _ = colour_run
    index = InfluenceIndex.build(run.adapter, snapshot, "exact")
    model, tokenizer = run.adapter.load(dtype="float32", device="cpu")
    examples, skipped = training_examples(list(snapshot.records()), tokenizer, run.adapter.recipe)
    assert skipped == 0
    assert len(examples) == len(index) == 10
    naive = naive_gradients(run.adapter, [(e.input_ids, e.labels) for e in examples])
    # Both are float32 forward and backward passes, summed in other orders (batched or one
    # by one, and by whatever vector paths this CPU has): each row within the rounding
    # bound of the pass's longest chain of sums.
    terms = backward_terms(model.config, max(len(e.input_ids) for e in examples))
    assert_rows_close(index.grads[0], naive, dtype=torch.float32, terms=terms)
    query = query_example("Code teal?", "TEAL ok.", tokenizer, run.adapter.recipe)
    q = naive_gradients(run.adapter, [query])[0]
    expected = exact_reference(naive, index.layout, q)
    found = torch.tensor([r.score for r in index.attribute("Code teal?", "TEAL ok.").records])
    # The scores solve with the damped Fisher: the gradients' relative error, and the
    # float32 solve's, grow by its condition number (float64 reference).
    growth = max(damped_condition(naive[:, part]) for part in index.layout.slices())
    bound = growth * (2 * gamma(terms, torch.float32) + gamma(naive.shape[1], torch.float32))
    error = float((found.double() - expected).norm() / expected.norm())
    assert error <= bound, f"scores off by {error:.3e} relative, bound {bound:.3e}"


def test_an_index_on_disk_reloads_with_the_same_scores(colour_run: Run, tmp_path: Path) -> None:
    snapshot, run, accounts = colour_run
    memory = InfluenceIndex.build(run.adapter, snapshot, "datainf", projection_dim=16)
    disk = InfluenceIndex.build(
        run.adapter, snapshot, "datainf", projection_dim=16, output_dir=tmp_path / "idx"
    )
    again = InfluenceIndex.load(tmp_path / "idx", run.adapter.path)
    first = memory.attribute("Code red?", "RED ok.")
    assert again.attribute("Code red?", "RED ok.").scores() == pytest.approx(first.scores())
    assert disk.attribute("Code red?", "RED ok.").scores() == pytest.approx(first.scores())
    assert again.width == sum(2 * 4 * 16 for _ in again.manifest.layer_names)
    assert (tmp_path / "idx" / "gradients-0.npy").stat().st_size >= 4 * len(again) * again.width
    assert set(first.contributor_scores()) == {a.address for a in accounts}


def checkpoint_gradients(base: Path, folder: Path, pairs: list[Pair]) -> torch.Tensor:
    """Per-example gradients (transformers' loss) of the PEFT checkpoint in ``folder``."""
    from peft import PeftModel

    from openledger.models import load_base_model

    model, _ = load_base_model(str(base), dtype="float32", device="cpu")
    return loop_gradients(PeftModel.from_pretrained(model, str(folder)).eval(), pairs)


def test_tracin_over_checkpoints_matches_a_loop_over_checkpoint_models(
    memorising_llama_dir: Path, colour_run: Run, tmp_path: Path
) -> None:
    from openledger.train import finetune

    snapshot, _, _ = colour_run
    out = tmp_path / "saved"
    run = finetune(
        recipe(memorising_llama_dir, max_steps=20), snapshot, out, save_steps=10, progress=False
    )
    folders = [out / "checkpoints" / "checkpoint-10", out / "checkpoints" / "checkpoint-20"]
    rates = [0.01, 0.004]
    index = InfluenceIndex.build(
        run.adapter, snapshot, "tracin", checkpoints=folders, learning_rates=rates
    )
    model, tokenizer = run.adapter.load(dtype="float32", device="cpu")
    examples, _ = training_examples(list(snapshot.records()), tokenizer, run.adapter.recipe)
    pairs = [(e.input_ids, e.labels) for e in examples]
    query = query_example("Code navy?", "NAVY ok.", tokenizer, run.adapter.recipe)
    expected = torch.zeros(len(pairs), dtype=torch.float64)
    sizes = torch.zeros(len(pairs), dtype=torch.float64)
    for folder, rate in zip(folders, rates, strict=True):
        grads = checkpoint_gradients(memorising_llama_dir, folder, [*pairs, query]).double()
        expected += rate * (grads[:-1] @ grads[-1])
        sizes += rate * grads[:-1].norm(dim=1) * grads[-1].norm()
    scores = index.attribute("Code navy?", "NAVY ok.").records
    found = torch.tensor([r.score for r in scores], dtype=torch.float64)
    # each side's gradient rows within the backward bound (relative, norm-wise) of the other's,
    # the query's too, then a float32 dot product over the gradient's width
    longest = max(len(ids) for ids, _ in [*pairs, query])
    terms = backward_terms(model.config, longest)
    relative = 2 * 2 * gamma(terms, torch.float32) + gamma(grads.shape[1], torch.float32)
    assert_within(found, expected, relative * sizes)
    # checkpoint-20 holds the final weights: other methods score with the last checkpoint
    final = InfluenceIndex.build(run.adapter, snapshot, "exact").attribute("Code navy?", "NAVY ok.")
    last = index.with_method("exact").attribute("Code navy?", "NAVY ok.")
    assert last.scores() == pytest.approx(final.scores(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("method", ["exact", "datainf", "gradcos"])
def test_many_queries_score_as_each_does_alone(method: str) -> None:
    grads, layout = synthetic(30, [12, 20])
    queries = torch.randn(5, 32, generator=torch.Generator().manual_seed(11))
    scorer = make_scorer(method, [grads], layout)
    together = scorer.scores([queries])
    assert together.shape == (5, 30)
    for row, query in zip(together, queries, strict=True):
        alone = scorer.scores([query])
        if method == "gradcos":  # |cos| <= 1: a dot product and two norms of 32 terms
            assert_within_rounding(row, alone, bound=3.0, dtype=torch.float32, terms=34)
        else:  # the same products in another order, grown by the solve
            assert_scores_close(row, alone, grads, layout)
    first, second = synthetic(6, [8]), synthetic(6, [8], seed=1)
    tracin = make_scorer("tracin", [first[0], second[0]], first[1], learning_rates=[0.1, 0.01])
    q1, q2 = torch.randn(3, 8), torch.randn(3, 8)
    both = tracin.scores([q1, q2])
    for i in range(3):
        size = 0.1 * abs_products(first[0], q1[i : i + 1]) + 0.01 * abs_products(
            second[0], q2[i : i + 1]
        )
        alone = tracin.scores([q1[i], q2[i]])
        assert_within_rounding(both[i], alone, bound=size[:, 0], dtype=torch.float32, terms=10)


def test_attribute_many_batches_the_answers_and_caches_their_gradients(
    colour_run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openledger.attribution.index as index_module

    snapshot, run, _ = colour_run
    answers = [("Code red?", "RED ok."), ("Code navy?", "NAVY ok."), ("Code gold?", "GOLD ok.")]
    index = InfluenceIndex.build(run.adapter, snapshot, "gradcos", projection_dim=8)
    together = index.attribute_many(answers)
    model, _ = run.adapter.load(dtype="float32", device="cpu")
    terms = backward_terms(model.config, run.adapter.recipe.max_length, projected=True)
    for (prompt, completion), report in zip(answers, together, strict=True):
        fresh = InfluenceIndex.build(run.adapter, snapshot, "gradcos", projection_dim=8)
        alone = fresh.attribute(prompt, completion)
        assert (report.prompt, report.completion) == (prompt, completion)
        assert [r.record_hash for r in report.records] == [r.record_hash for r in alone.records]
        # cosines (|cos| <= 1) of rows each within the backward pass's bound, batched or not
        got, want = (
            torch.tensor([r.score for r in report.records]),
            torch.tensor([r.score for r in alone.records]),
        )
        assert_within(got, want, 8 * gamma(terms, torch.float32))
    assert together[0].top(1)[0].text.startswith("user: Code red?")

    def no_model(*args: object, **kwargs: object) -> list[torch.Tensor]:
        raise AssertionError("a cached answer ran the model again")

    monkeypatch.setattr(index_module, "query_gradients", no_model)
    again = index.attribute(*answers[1])
    # the same cached rows, scored alone (a matrix-vector product instead of a matrix one)
    cached = torch.tensor([r.score for r in again.records])
    batched = torch.tensor([r.score for r in together[1].records])
    assert_within(cached, batched, 2 * 3 * gamma(index.width + 2, torch.float32))
    assert index.attribute_many([]) == []
    with pytest.raises(AttributionInputError, match="completion"):
        index.attribute_many([("Code red?", "")])
