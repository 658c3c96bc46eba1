"""Why leave-one-contributor-out agreement falls as training nears convergence (tiny Llama).

    python benchmarks/attribution_loco_study.py [--steps 20 60 150] [--queries 6]

The setting of ``benchmarks/attribution_quality.py`` (tiny random Llama, rank-2 LoRA on
q/v, full-batch steps at lr 1e-2, 20 records from 5 contributors, 6 queries). For each
training length, the adapter and the 5 leave-one-contributor-out retrainings are trained
from the same start, and the rise in each query's loss is measured. Printed, per training
length: the mean query loss, the mean |rise|, and the leave-one-contributor-out Spearman
(mean over queries) of ``exact`` and ``datainf`` scores

- with damping scales 1e-3 ... 10 (the default is 0.1), all LoRA layers;
- with the default damping, restricted to a subset of LoRA layers (``q_proj`` only,
  ``v_proj`` only, transformer layer 0 only, layer 1 only).

Also ``tracin`` over 5 checkpoints along the training (learning-rate weighted, linear
schedule). Baseline in the same run: ``tracin`` at the final adapter (plain gradient dot
product, no inverse), and random scores.

    python benchmarks/attribution_loco_study.py --seeds 10 [--steps 60 150]

measures how reproducible the ground truth itself is: the adapter and the 5 retrainings
are trained again from each of ``--seeds`` LoRA initialisations (everything else equal),
and it prints the Spearman between two seeds' rises (the most any score can agree with a
single retraining), each seed's ``exact`` / ``datainf`` agreement with its own retraining,
agreement with the rises averaged over seeds (scores of seed 0, and scores averaged over
the seeds), and how often the top contributor by score is the top one by rise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import describe_machine  # benchmarks/ is the script folder
from _scratch import scratch_dir
from attribution_quality import QUERIES, groups, losses
from tests.attribution.conftest import make_snapshot, recipe, train
from tests.attribution.test_attribution_quality import spearman

from openledger.attribution import GradientLayout, InfluenceIndex
from openledger.attribution.influence import make_scorer
from openledger.crypto import Account
from openledger.train import finetune

SETTINGS = {"learning_rate": 1e-2, "batch_size": 32, "r": 2}
CHECKPOINTS = 5
DAMPINGS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
SUBSETS = {
    "all": lambda name: True,
    "q_proj": lambda name: name.endswith("q_proj"),
    "v_proj": lambda name: name.endswith("v_proj"),
    "layer 0": lambda name: ".layers.0." in name,
    "layer 1": lambda name: ".layers.1." in name,
}


def restricted(index: Any, keep: Any) -> tuple[torch.Tensor, GradientLayout, list[int]]:
    """The index's gradient columns of the layers ``keep`` accepts, and their layout."""
    columns: list[int] = []
    offsets, names = [0], []
    for name, part in zip(index.layout.names, index.layout.slices(), strict=True):
        if keep(name):
            columns += list(range(part.start, part.stop))
            offsets.append(offsets[-1] + part.stop - part.start)
            names.append(name)
    return index.grads[0][:, columns], GradientLayout(tuple(names), tuple(offsets)), columns


def contributor_spearman(
    index: Any, scores: list[list[float]], accounts: list[Any], rises: list[list[float]]
) -> float:
    """Mean over queries of Spearman(summed contributor score, rise in query loss)."""
    owner = [r.contributor for r in index.manifest.records]
    found = []
    for q, per_record in enumerate(scores):
        totals = [
            sum(s for o, s in zip(owner, per_record, strict=True) if o == a.address)
            for a in accounts
        ]
        found.append(spearman(totals, [rise[q] for rise in rises]))
    return statistics.mean(found)


def loco_rises(
    base: Path,
    parts: list[Any],
    folder: Path,
    queries: list[Any],
    full: list[float],
    **changes: Any,
) -> list[list[float]]:
    """Rise in each query's loss (vs ``full``) after retraining without each contributor."""
    rises = []
    for left_out in range(len(parts)):
        kept = [r for k, g in enumerate(parts) if k != left_out for r in g]
        again = train(base, kept, folder.with_name(f"{folder.name}-{left_out}"), **changes)
        rises.append([a - b for a, b in zip(losses(again.adapter, queries), full, strict=True)])
    return rises


def study(steps: int, base: Path, work: Path, queries: list[tuple[str, str]]) -> None:
    """Train, retrain without each contributor, and print one table row per variant."""
    accounts = [Account.from_key(bytes([i + 1]) * 32) for i in range(5)]
    parts = groups()
    snapshot = make_snapshot(work / f"dn-{steps}", parts, accounts)
    every = max(1, steps // CHECKPOINTS)
    run = finetune(
        recipe(base, max_steps=steps, **SETTINGS),
        snapshot,
        work / f"full-{steps}",
        save_steps=every,
        progress=False,
    )
    full = losses(run.adapter, queries)
    rises = loco_rises(
        base, parts, work / f"loco-{steps}", queries, full, max_steps=steps, **SETTINGS
    )
    index = InfluenceIndex.build(run.adapter, snapshot, "exact")
    query_grads = [index.query_gradients(*q)[-1] for q in queries]
    mean_rise = statistics.mean(abs(r) for rise in rises for r in rise)
    head = f"| {steps} | {statistics.mean(full):.3f} | {mean_rise:.4f}"

    def row(label: str, method: str, grads: Any, layout: Any, columns: Any, damping: float):
        scorer = make_scorer(method, [grads], layout, learning_rates=[1.0], damping_scale=damping)
        scores = [scorer.scores([q[columns]]).tolist() for q in query_grads]
        value = contributor_spearman(index, scores, accounts, rises)
        print(f"{head} | {method} | {label} | {value:.2f} |")

    for damping in DAMPINGS:
        for method in ("exact", "datainf"):
            row(
                f"damping {damping:g}, all layers",
                method,
                *restricted(index, SUBSETS["all"]),
                damping,
            )
    for name, keep in list(SUBSETS.items())[1:]:
        for method in ("exact", "datainf"):
            row(f"damping 0.1, {name} only", method, *restricted(index, keep), 0.1)
    row("no inverse", "tracin", *restricted(index, SUBSETS["all"]), 0.1)
    marks = list(range(every, steps + 1, every))
    folders = [work / f"full-{steps}" / "checkpoints" / f"checkpoint-{m}" for m in marks]
    # NOTE: linear schedule; each checkpoint stands for the interval before it
    rates = [SETTINGS["learning_rate"] * (1 - (m - every / 2) / steps) for m in marks]
    path = InfluenceIndex.build(
        run.adapter, snapshot, "tracin", checkpoints=folders, learning_rates=rates
    )
    scores = [[r.score for r in path.attribute(*q).records] for q in queries]
    value = contributor_spearman(index, scores, accounts, rises)
    print(f"{head} | tracin | {len(marks)} checkpoints along training | {value:.2f} |")
    generator = torch.Generator().manual_seed(steps)
    randoms = [torch.randn(len(index), generator=generator).tolist() for _ in queries]
    print(f"{head} | random | - | {contributor_spearman(index, randoms, accounts, rises):.2f} |")


def seed_noise(steps: int, seeds: int, base: Path, work: Path, queries: list[Any]) -> None:
    """Ground-truth reproducibility over LoRA init seeds, and the methods against it."""
    accounts = [Account.from_key(bytes([i + 1]) * 32) for i in range(5)]
    parts = groups()
    snapshot = make_snapshot(work / f"dn-seeds-{steps}", parts, accounts)
    rises: list[torch.Tensor] = []  # per seed [contributors, queries]
    totals: dict[str, list[torch.Tensor]] = {"exact": [], "datainf": []}
    for seed in range(seeds):
        tag = f"{steps}-seed{seed}"
        run = train(base, snapshot, work / f"full-{tag}", max_steps=steps, seed=seed, **SETTINGS)
        full = losses(run.adapter, queries)
        rise = loco_rises(
            base, parts, work / f"loco-{tag}", queries, full, max_steps=steps, seed=seed, **SETTINGS
        )
        rises.append(torch.tensor(rise))
        index = InfluenceIndex.build(run.adapter, snapshot, "exact")
        for method, found in totals.items():
            scorer = index.with_method(method)
            per_query = [scorer.attribute(*q).contributor_scores() for q in queries]
            found.append(torch.tensor([[t[a.address] for t in per_query] for a in accounts]))

    def agree(scores: torch.Tensor, truth: torch.Tensor) -> float:
        """Mean over queries of Spearman across the 5 contributors."""
        return statistics.mean(
            spearman(scores[:, q].tolist(), truth[:, q].tolist()) for q in range(len(queries))
        )

    pairs = [(a, b) for a in range(seeds) for b in range(a + 1, seeds)]
    mean_truth = torch.stack(rises).mean(0)
    others = [torch.stack([r for k, r in enumerate(rises) if k != s]).mean(0) for s in range(seeds)]
    print(
        f"| {steps} | {seeds} | ground truth: seed vs seed "
        f"{statistics.mean(agree(rises[a], rises[b]) for a, b in pairs):.2f} (mean over "
        f"{len(pairs)} pairs); seed vs mean of the other seeds "
        f"{statistics.mean(agree(rises[s], others[s]) for s in range(seeds)):.2f} |"
    )
    for method, found in totals.items():
        own = [agree(found[s], rises[s]) for s in range(seeds)]
        top = [
            int(found[s][:, q].argmax() == rises[s][:, q].argmax())
            for s in range(seeds)
            for q in range(len(queries))
        ]
        print(
            f"| {steps} | {seeds} | {method}: vs own seed's retraining {statistics.mean(own):.2f} "
            f"(min {min(own):.2f}, max {max(own):.2f}); seed 0 vs mean truth "
            f"{agree(found[0], mean_truth):.2f}; averaged scores vs mean truth "
            f"{agree(torch.stack(found).mean(0), mean_truth):.2f}; top-1 contributor "
            f"{sum(top)}/{len(top)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 60, 150])
    parser.add_argument("--queries", type=int, default=len(QUERIES))
    parser.add_argument(
        "--seeds", type=int, default=0, help="measure ground-truth noise over this many seeds"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    from openledger.models import save_tiny_model

    print(f"machine: {describe_machine('1 torch thread')}")
    started = time.perf_counter()
    work = scratch_dir("attr-loco-")
    base = save_tiny_model(work / "llama", "llama", seed=1, initializer_range=0.3)
    if args.seeds:
        print("| steps | seeds | leave-one-contributor-out Spearman (mean over queries) |")
        print("|---|---|---|")
        for steps in args.steps:
            seed_noise(steps, args.seeds, base, work, QUERIES[: args.queries])
    else:
        print("| steps | mean query loss | mean |rise| | method | variant | LOCO Spearman |")
        print("|---|---|---|---|---|---|")
        for steps in args.steps:
            study(steps, base, work, QUERIES[: args.queries])
    print(f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
