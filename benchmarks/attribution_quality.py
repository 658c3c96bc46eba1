"""Attribution quality against retraining on a tiny Llama with LoRA (CPU, minutes).

    python benchmarks/attribution_quality.py [--subsets 50] [--queries 6]

Setting: a tiny random Llama (2 layers, hidden 64, vocab 384; ``save_tiny_model``), a
rank-2 LoRA on q/v projections trained with full-batch steps (60 steps, lr 1e-2), so a
retrained model depends on its data only. The datanet has 20 instruction records from 5
contributors (colour codes, some sharing answers, some conflicting).

Printed, for each method (exact, datainf, tracin, gradcos; ``exact`` and ``datainf`` again
from an index of bfloat16 rows, and from one of bfloat16 passes and rows; and ``spans``, the
longest spans of the answer that records hold, from the tiny model's tokenizer, records
holding no span scoring 0):

- Pearson correlation of its scores with ``exact`` over all records, per query (mean);
- LDS (linear datamodeling score): for ``--subsets`` random halves S of the records,
  retrain on S and measure each query's loss; LDS is the Spearman correlation, over the
  subsets, between ``-sum_{i in S} score_i`` and the measured loss, averaged over queries;
- leave-one-contributor-out: Spearman, over the 5 contributors, between the summed
  contributor score and the rise in query loss when that contributor's records are
  removed and the model retrained, averaged over queries;
- top-1 contributor: in how many queries the contributor with the largest summed score is
  the one whose removal raised the query loss most (the part of the leave-one-contributor-
  out ranking that is reproducible across training seeds: ``attribution_loco_study.py``).

Baseline in the same run: a random attribution (scores drawn from a normal distribution),
whose LDS should be near 0.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import describe_machine  # benchmarks/ is the script folder
from _scratch import scratch_dir
from tests.attribution.conftest import make_snapshot, train
from tests.attribution.test_attribution_quality import pearson, spearman
from transformers import AutoTokenizer

from openledger.attribution import InfluenceIndex, SpanIndex
from openledger.attribution.examples import query_example
from openledger.attribution.gradients import example_loss
from openledger.crypto import Account
from openledger.data import InstructionRecord

SETTINGS = {"max_steps": 60, "learning_rate": 1e-2, "batch_size": 32, "r": 2}
METHODS = ("exact", "datainf", "tracin", "gradcos")


def machine() -> str:
    """Return the CPU model, core count and Python version."""
    return describe_machine("1 torch thread")


def groups() -> list[list[InstructionRecord]]:
    """Five contributors, four records each."""

    def rec(q: str, a: str) -> InstructionRecord:
        return InstructionRecord(instruction=q, response=a)

    return [
        [
            rec("Code red?", "RED ok."),
            rec("Code blue?", "BLUE ok."),
            rec("code red!", "RED ok."),
            rec("Code gold?", "GOLD ok."),
        ],
        [
            rec("Code pink?", "PINK ok."),
            rec("code blue!", "BLUE ok."),
            rec("Code teal?", "TEAL ok."),
            rec("Code red, please?", "RED ok."),
        ],
        [
            rec("Code navy?", "NAVY ok."),
            rec("Code plum?", "PLUM ok."),
            rec("Code rust?", "RUST ok."),
            rec("Code lime?", "LIME ok."),
        ],
        [
            rec("Code red!", "PINK ok."),
            rec("code gold?", "GOLD ok."),
            rec("Code gray?", "GRAY ok."),
            rec("Code mint?", "MINT ok."),
        ],
        [
            rec("Code red ?", "BLUE ok."),
            rec("CODE blue?", "RED ok."),
            rec("Code sand?", "SAND ok."),
            rec("Code jade?", "JADE ok."),
        ],
    ]


QUERIES = [
    ("Code red?", "RED ok."),
    ("Code blue?", "BLUE ok."),
    ("Code gold?", "GOLD ok."),
    ("Code plum?", "PLUM ok."),
    ("Code teal?", "TEAL ok."),
    ("Code mint?", "MINT ok."),
]


def losses(adapter: Any, queries: list[tuple[str, str]]) -> list[float]:
    model, tokenizer = adapter.load(dtype="float32", device="cpu")
    found = []
    with torch.no_grad():
        for prompt, answer in queries:
            ids, labels = query_example(prompt, answer, tokenizer, adapter.recipe)
            found.append(float(example_loss(model, ids, labels)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--queries", type=int, default=len(QUERIES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from openledger.models import save_tiny_model

    print(f"machine: {machine()}")
    started = time.perf_counter()
    work = scratch_dir("attr-quality-")
    base = save_tiny_model(work / "llama", "llama", seed=1, initializer_range=0.3)
    accounts = [Account.from_key(bytes([i + 1]) * 32) for i in range(5)]
    parts = groups()
    snapshot = make_snapshot(work / "dn", parts, accounts)
    queries = QUERIES[: args.queries]
    run = train(base, snapshot, work / "full", **SETTINGS)
    index = InfluenceIndex.build(run.adapter, snapshot, "exact")
    hashes = [r.record_hash for r in index.manifest.records]
    records = {s.record_hash: s.record for s in snapshot.records()}
    rng = torch.Generator().manual_seed(0)
    scores: dict[str, list[list[float]]] = {
        m: [[r.score for r in index.with_method(m).attribute(*q).records] for q in queries]
        for m in METHODS
    }
    variants = {
        "bfloat16 rows": {"storage_dtype": "bfloat16"},
        "bfloat16 passes and rows": {"compute_dtype": "bfloat16", "storage_dtype": "bfloat16"},
    }
    for label, dtypes in variants.items():
        fast = InfluenceIndex.build(run.adapter, snapshot, "exact", **dtypes)
        for method in ("exact", "datainf"):
            scores[f"{method}, {label}"] = [
                [r.score for r in fast.with_method(method).attribute(*q).records] for q in queries
            ]
    spans = SpanIndex.build(snapshot, AutoTokenizer.from_pretrained(str(base)))
    scores["spans"] = [[spans.attribute(*q).scores().get(h, 0.0) for h in hashes] for q in queries]
    scores["random"] = [torch.randn(len(hashes), generator=rng).tolist() for _ in queries]

    picker = random.Random(0)
    subsets = [
        sorted(picker.sample(range(len(hashes)), len(hashes) // 2)) for _ in range(args.subsets)
    ]
    actual = []
    for number, subset in enumerate(subsets):
        kept = [records[hashes[i]] for i in subset]
        actual.append(
            losses(train(base, kept, work / f"subset-{number}", **SETTINGS).adapter, queries)
        )
    full = losses(run.adapter, queries)
    loco = []
    for left_out in range(5):
        kept = [r for k, g in enumerate(parts) if k != left_out for r in g]
        retrained = losses(
            train(base, kept, work / f"loco-{left_out}", **SETTINGS).adapter, queries
        )
        loco.append([after - before for after, before in zip(retrained, full, strict=True)])

    print(
        f"{len(hashes)} records, 5 contributors, {len(queries)} queries, "
        f"{len(subsets)} half-subsets, {len(subsets) + 6} trainings; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print(
        "| method | Pearson with exact | LDS | leave-one-contributor-out Spearman "
        "| top-1 contributor |"
    )
    print("|---|---|---|---|---|")
    owner = {r.record_hash: r.contributor for r in index.manifest.records}
    for method, per_query in scores.items():
        corr = statistics.mean(pearson(s, scores["exact"][q]) for q, s in enumerate(per_query))
        lds = statistics.mean(
            spearman([-sum(s[i] for i in subset) for subset in subsets], [a[q] for a in actual])
            for q, s in enumerate(per_query)
        )
        contributor, top = [], 0
        for q, s in enumerate(per_query):
            totals = [
                sum(v for h, v in zip(hashes, s, strict=True) if owner[h] == a.address)
                for a in accounts
            ]
            rises = [change[q] for change in loco]
            contributor.append(spearman(totals, rises))
            top += totals.index(max(totals)) == rises.index(max(rises))
        print(
            f"| {method} | {corr:.3f} | {lds:.3f} | {statistics.mean(contributor):.3f} "
            f"| {top}/{len(per_query)} |"
        )


if __name__ == "__main__":
    main()
