"""Quality against ground truth: exact inverse, leave-one-contributor-out retraining, a fact.

Tiny Llamas trained near convergence on CPU. The retraining test trains six adapters
(~5 s each on one thread).
"""

from __future__ import annotations

import html
from pathlib import Path

import pytest
import torch
from tests.attribution.conftest import colour_records, make_snapshot, train

from openledger.attribution import InfluenceIndex
from openledger.attribution.examples import query_example
from openledger.attribution.gradients import example_loss
from openledger.crypto import Account
from openledger.data import InstructionRecord
from openledger.train import Adapter, TrainingRun

CONVERGED = {"max_steps": 150, "learning_rate": 2e-2}
# NOTE: full-batch steps make retraining deterministic in the data, so leaving records out
# changes nothing but the data (no reshuffled batch noise in the ground truth). Rank 2 and
# 60 steps: a moderately trained adapter. With 150 steps at rank 4 (near convergence) the
# same comparison gave Spearman 0.5 (exact) and 0.6 (datainf) when this setting was chosen.
FULL_BATCH = {"max_steps": 60, "learning_rate": 1e-2, "batch_size": 32, "r": 2}


def pearson(a: list[float], b: list[float]) -> float:
    return float(torch.corrcoef(torch.tensor([a, b], dtype=torch.float64))[0, 1])


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    found = [0.0] * len(values)
    for rank, index in enumerate(order):
        found[index] = float(rank)
    return found


def spearman(a: list[float], b: list[float]) -> float:
    return pearson(ranks(a), ranks(b))


def final_loss(run: TrainingRun) -> float:
    """Mean of the last ten logged training losses."""
    curve = [entry["loss"] for entry in run.history if "loss" in entry]
    return sum(curve[-10:]) / len(curve[-10:])


def query_loss(adapter: Adapter, prompt: str, completion: str) -> float:
    model, tokenizer = adapter.load(dtype="float32", device="cpu")
    ids, labels = query_example(prompt, completion, tokenizer, adapter.recipe)
    with torch.no_grad():
        return float(example_loss(model, ids, labels))


def test_helpers_rank_like_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [1, 2, 3, 5, 4]) == pytest.approx(0.9)


def test_datainf_agrees_with_exact_on_a_converged_adapter(
    memorising_llama_dir: Path, tmp_path: Path
) -> None:
    accounts = [Account.create(), Account.create()]
    records = colour_records()
    snapshot = make_snapshot(tmp_path / "dn", [records[:6], records[6:]], accounts)
    run = train(memorising_llama_dir, snapshot, tmp_path / "adapter", **CONVERGED)
    assert final_loss(run) < 0.5
    index = InfluenceIndex.build(run.adapter, snapshot, "exact")
    datainf = index.with_method("datainf")
    # NOTE: queries are answers the model learnt (what attribution is asked about).
    for word in ("red", "gold", "plum"):
        prompt, answer = f"Code {word}?", f"{word.upper()} ok."
        exact = [r.score for r in index.attribute(prompt, answer).records]
        approx = [r.score for r in datainf.attribute(prompt, answer).records]
        assert pearson(exact, approx) >= 0.95, word


def red_groups() -> list[list[InstructionRecord]]:
    """Five contributors from helping to hurting the answer "RED ok." to "Code red?".

    Two teach it (one with the exact question), one is unrelated, two teach conflicting
    answers to near-identical questions; each also gives two unrelated colour records.
    """

    def teach(pairs: list[tuple[str, str]]) -> list[InstructionRecord]:
        return [InstructionRecord(instruction=q, response=a) for q, a in pairs]

    fillers = colour_records(
        ["blue", "green", "gold", "pink", "gray", "teal", "navy", "plum", "rust", "lime"]
    )
    topical = [
        teach([("Code red?", "RED ok."), ("Code red, please?", "RED ok.")]),
        teach([("code red?", "RED ok.")]),
        [],
        teach([("Code red!", "PINK ok.")]),
        teach([("Code red ?", "BLUE ok."), ("code red!", "BLUE ok."), ("Code Red?", "BLUE ok.")]),
    ]
    return [t + fillers[2 * i : 2 * i + 2] for i, t in enumerate(topical)]


def test_contributor_scores_rank_like_leave_one_contributor_out_retraining(
    memorising_llama_dir: Path, tmp_path: Path
) -> None:
    accounts = [Account.from_key(bytes([i + 1]) * 32) for i in range(5)]
    groups = red_groups()
    snapshot = make_snapshot(tmp_path / "dn", groups, accounts)
    query = ("Code red?", "RED ok.")

    def retrain(seed: int) -> tuple[TrainingRun, list[float]]:
        """The adapter and the rise in query loss without each contributor (LoRA init seed)."""
        run = train(
            memorising_llama_dir, snapshot, tmp_path / f"full-{seed}", seed=seed, **FULL_BATCH
        )
        full_loss = query_loss(run.adapter, *query)
        changes = []
        for left_out in range(5):
            kept = [r for i, g in enumerate(groups) if i != left_out for r in g]
            folder = tmp_path / f"without-{left_out}-{seed}"
            retrained = train(memorising_llama_dir, kept, folder, seed=seed, **FULL_BATCH)
            changes.append(query_loss(retrained.adapter, *query) - full_loss)
        return run, changes

    run, changes = retrain(0)
    _, again = retrain(1)
    # NOTE: the ground truth must be reproducible for the comparison to mean anything:
    # retraining from another LoRA init ranks these contributors alike. Where contributor
    # effects sit within seed noise, two retrainings agree at ~0.6 and no score can do
    # better (benchmarks/RESULTS.md, Attribution). Here the unrelated contributor and one
    # with conflicting answers are near-tied and swap places between seeds, so the scores
    # of seed 0's adapter are held to seed 0's retraining and to the rises averaged over
    # both seeds; the top contributor must be the top one of each seed.
    assert spearman(changes, again) >= 0.8, (changes, again)
    averaged = [(a + b) / 2 for a, b in zip(changes, again, strict=True)]
    index = InfluenceIndex.build(run.adapter, snapshot, "exact")
    for method in ("exact", "datainf"):
        totals = index.with_method(method).attribute(*query).contributor_scores()
        summed = [totals[a.address] for a in accounts]
        assert spearman(summed, changes) >= 0.8, (method, summed, changes)
        assert spearman(summed, averaged) >= 0.8, (method, summed, averaged)
        top = max(range(5), key=summed.__getitem__)
        assert all(top == max(range(5), key=truth.__getitem__) for truth in (changes, again))


def test_the_contributor_who_alone_teaches_a_fact_gets_the_largest_share(
    memorising_llama_dir: Path, tmp_path: Path
) -> None:
    teacher, others = Account.create(), [Account.create() for _ in range(3)]
    fact = [
        InstructionRecord(instruction="Code plum?", response="PLUM ok."),
        InstructionRecord(instruction="code plum!", response="PLUM ok."),
    ]
    words = ["red", "blue", "green", "gold", "pink", "gray"]
    groups = [fact] + [colour_records(words[2 * i : 2 * i + 2]) for i in range(3)]
    snapshot = make_snapshot(tmp_path / "dn", groups, [teacher, *others])
    run = train(memorising_llama_dir, snapshot, tmp_path / "adapter", **CONVERGED)
    answer = greedy(run.adapter, "Code plum?")
    assert answer.startswith("PLUM ok")
    index = InfluenceIndex.build(run.adapter, snapshot, "datainf")
    for method in ("exact", "datainf", "tracin", "gradcos"):
        shares = index.with_method(method).attribute("Code plum?", answer).contributor_shares()
        assert max(shares, key=shares.__getitem__) == teacher.address, method


def greedy(adapter: Adapter, prompt: str) -> str:
    model, tokenizer = adapter.load(dtype="float32", device="cpu")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


def test_a_report_says_how_reliable_its_method_was_on_the_benchmark() -> None:
    from openledger.attribution import METHOD_RELIABILITY, METHODS, AttributionReport

    assert set(METHOD_RELIABILITY) == {*METHODS, "spans"}
    zero = "0x" + "00" * 32
    for method in (*METHODS, "spans"):
        report = AttributionReport(method, zero, zero, None, "Code red?", "RED ok.", ())
        assert report.reliability.startswith(method)
        assert "LDS" in report.reliability
        assert "top contributor" in report.reliability
        assert html.escape(report.reliability) in report._repr_html_()
    unknown = AttributionReport("other", zero, zero, None, "Code red?", "RED ok.", ())
    assert unknown.reliability == "not measured on the attribution benchmark"
