"""Influence index build rate and per-query time vs number of training records (SmolLM2).

    python benchmarks/attribution_speed.py [--records 2000] [--projection 16] [--steps 10]

An instruction datanet of ``--records`` records (10 contributors) is snapshotted; a rank-8,
all-linear LoRA adapter of SmolLM2-135M-Instruct is trained on it for ``--steps`` optimizer
steps (enough to have a real adapter; its quality does not change the cost). The index is
built with per-factor random projections of size ``--projection`` (see docs/attribution.md)
and the build rate is reported. Query time is the wall time of ``index.attribute`` (query
gradient + scoring + report) for each method, median of 5 queries after one warm-up, on
indexes over N records. For N above ``--records`` the index's real gradient rows are
tiled (repeated) up to N: scoring cost depends only on the matrix shape, and the table
marks those rows "tiled". Baseline in the same run: the query gradient alone (one forward
and backward of SmolLM2 with the adapter, plus the projections), the floor every method
shares. One torch thread by default: on the shared 2-core machine two threads ran a
SmolLM2 forward+backward 4-7x slower than one (oversubscription with other processes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _machine import describe_machine  # benchmarks/ is the script folder


def machine() -> str:
    """Return the CPU model, core count, torch threads and Python version."""
    return describe_machine(f"{torch.get_num_threads()} torch threads")


def datanet_snapshot(folder: Path, count: int):  # type: ignore[no-untyped-def]
    """A datanet of ``count`` short instruction records from 10 contributors."""
    from openledger.crypto import Account
    from openledger.data import Datanet, InstructionRecord

    datanet = Datanet.create(folder, name="speed", schema=InstructionRecord)
    accounts = [Account.create() for _ in range(10)]
    records = [
        InstructionRecord(
            instruction=f"What is the code of item {i}?",
            response=f"Item {i}: code {i * 7919 % 10007}.",
        )
        for i in range(count)
    ]
    for k, account in enumerate(accounts):
        datanet.contribute(records[k::10], contributor=account)
    return datanet.snapshot()


def timed_queries(index, prompts: list[tuple[str, str]]) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of ``index.attribute`` over ``prompts`` after one warm-up."""
    index.attribute(*prompts[0])
    times = []
    for prompt in prompts:
        started = time.perf_counter()
        index.attribute(*prompt)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def build(args: argparse.Namespace) -> Any:
    """Snapshot, train and index (see the module docstring); print the build figures."""
    from openledger.attribution import InfluenceIndex
    from openledger.train import LoraRecipe, finetune

    work = Path(tempfile.mkdtemp(prefix="attr-speed-"))
    print(f"work folder: {work}")
    snapshot = datanet_snapshot(work / "dn", args.records)
    recipe = LoraRecipe(
        base_model="smollm2-135m-instruct",
        r=8,
        alpha=16,
        max_steps=args.steps,
        batch_size=4,
        max_length=64,
    )
    started = time.perf_counter()
    run = finetune(recipe, snapshot, work / "adapter", progress=False)
    print(f"adapter: r=8 all-linear, {args.steps} steps in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    index = InfluenceIndex.build(
        run.adapter,
        snapshot,
        "datainf",
        projection_dim=args.projection,
        output_dir=work / "index",
        progress=True,
    )
    seconds = time.perf_counter() - started
    print(
        f"build: {len(index)} records in {seconds:.0f} s = {len(index) / seconds:.2f} records/s "
        f"(model load included); {len(index.manifest.layer_names)} LoRA layers, "
        f"{4 * index.width:,} bytes per record, "
        f"{4 * index.width * len(index) / 2**20:.0f} MiB on disk"
    )
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--projection", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see docstring)")
    parser.add_argument("--reuse", help="work folder of an earlier run: time queries only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from openledger.attribution import InfluenceIndex

    print(f"machine: {machine()}")
    if args.reuse is None:
        index = build(args)
    else:
        folder = Path(args.reuse)
        index = InfluenceIndex.load(folder / "index", folder / "adapter")
        print(f"reused index: {len(index)} records from {folder}")
    prompts = [
        (f"What is the code of item {i}?", f"Item {i}: code {i * 7919 % 10007}.")
        for i in (3, 17, 404, 1234, 1999)
    ]
    print(
        "| records | "
        + " | ".join(["exact", "datainf", "tracin", "gradcos"])
        + " | query gradient alone |"
    )
    print("|---|---|---|---|---|---|")
    index._ensure_model()
    for count in sorted({len(index), 500, 1000, 2000}):
        repeats = -(-count // len(index))
        rows = torch.cat([index.grads[0]] * repeats)[:count]
        records = (index.manifest.records * repeats)[:count]
        changed = index.manifest.model_copy(update={"records": records})
        sub = InfluenceIndex(changed, [rows], index.adapter)
        sub._model, sub._tokenizer = index._model, index._tokenizer
        cells = []
        for method in ("exact", "datainf", "tracin", "gradcos"):
            cells.append(f"{timed_queries(sub.with_method(method), prompts):.3f} s")
        started = time.perf_counter()
        for prompt in prompts:
            sub.query_gradients(*prompt)
        grad_only = (time.perf_counter() - started) / len(prompts)
        label = f"{count}" + (" (tiled)" if count > len(index) else "")
        print(f"| {label} | " + " | ".join(cells) + f" | {grad_only:.3f} s |")


if __name__ == "__main__":
    main()
