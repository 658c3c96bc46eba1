"""Attributing many answers at once: ``InfluenceIndex.attribute_many`` against one by one.

    python benchmarks/attribution_batch_queries.py [--records 64] [--answers 64]

A datanet of ``--records`` short instruction records (10 contributors) is snapshotted, a
rank-8 all-linear LoRA adapter of SmolLM2-135M-Instruct is trained on it for two steps
(the cost does not depend on its quality), and a ``datainf`` index is built with
``projection_dim=16``. Then, on fresh copies of the index (so no query gradient is cached):
the time of one answer's ``attribute``; of ``--answers`` distinct answers through
``attribute_many`` (their gradients in length-sorted batches, one matrix product against the
index); and, as the baseline in the same run, of the same answers one ``attribute`` call
each. Target (docs/attribution.md): 64 answers in <= 3x the time of one. One torch thread
(see benchmarks/attribution_speed.py on oversubscription of the shared machine).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _machine import describe_machine  # benchmarks/ is the script folder
from _scratch import scratch_dir
from attribution_speed import datanet_snapshot, item

from openledger.attribution import InfluenceIndex
from openledger.train import LoraRecipe, finetune


def fresh(index: InfluenceIndex) -> InfluenceIndex:
    """The same rows and model, without cached query gradients."""
    copy = index.with_method(index.method)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--answers", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe_machine("1 torch thread"), f"load {os.getloadavg()[0]:.1f}", flush=True)
    work = Path(scratch_dir("ol-bench-batch-queries-"))
    snapshot = datanet_snapshot(work / "dn", args.records)
    recipe = LoraRecipe(
        base_model="smollm2-135m-instruct", r=8, target_modules="all-linear", max_steps=2,
        batch_size=4, max_length=128,
    )  # fmt: skip
    run = finetune(recipe, snapshot, work / "adapter", progress=False)
    index = InfluenceIndex.build(run.adapter, snapshot, "datainf", projection_dim=16)
    answers = [item(i) for i in range(args.answers)]
    fresh(index).attribute(*answers[-1])  # warm-up: loads the model, first passes
    start = time.perf_counter()
    fresh(index).attribute(*answers[0])
    one = time.perf_counter() - start
    start = time.perf_counter()
    reports = fresh(index).attribute_many(answers)
    many = time.perf_counter() - start
    alone = fresh(index)
    start = time.perf_counter()
    for answer in answers:
        alone.attribute(*answer)
    loop = time.perf_counter() - start
    assert len(reports) == len(answers)
    print(
        f"{len(index)} records, {args.answers} answers: one {one:.2f} s; attribute_many "
        f"{many:.2f} s ({many / one:.1f}x one, target <= 3x); one by one {loop:.2f} s "
        f"(attribute_many {loop / many:.1f}x faster); load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
