"""Influence index build rate and per-query time vs number of training records (SmolLM2).

    python benchmarks/attribution_speed.py [--records 2000] [--projection 16] [--steps 10]

An instruction datanet of ``--records`` distinct records (10 contributors) is snapshotted; a
rank-8, all-linear LoRA adapter of SmolLM2-135M-Instruct is trained on it for ``--steps``
optimizer steps (enough to have a real adapter; its quality does not change the cost). The
index is built with per-factor random projections of size ``--projection`` (see
docs/attribution.md), records batched by length up to ``--batch-tokens`` padded tokens per
forward and backward pass, and the build rate is reported.

Build baseline in the same run: the per-record path (one forward and backward per record,
then projection of the full gradients) against the batched path with one record per pass
(logits only where learnt, projection before the outer product) and with
``--batch-tokens`` per pass, on the same ``--baseline-records`` records, in ``--rounds``
interleaved rounds (median rates, median of per-round ratios), with the largest
difference between their rows.

Query time is the wall time of ``index.attribute`` (query gradient + scoring + report) for
each method, median of ``--queries`` queries after one warm-up, on indexes over the first N
records. For N above the index's size its real gradient rows are tiled (repeated) up to N:
scoring cost depends only on the matrix shape, and the table marks those rows "tiled".
Baseline in the same run: the query gradient alone (one forward and backward of SmolLM2
with the adapter, projected), the floor every method shares. One torch thread by default:
on the shared 2-core machine two threads ran a SmolLM2 forward+backward 4-7x slower than
one (oversubscription with other processes). The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _machine import describe_machine  # benchmarks/ is the script folder
from _scratch import scratch_dir


def machine() -> str:
    """Return the CPU model, core count, torch threads and Python version."""
    return describe_machine(f"{torch.get_num_threads()} torch threads")


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def item(i: int) -> tuple[str, str]:
    """Record ``i``'s instruction and response (distinct for every ``i``)."""
    return f"What is the code of item {i}?", f"Item {i}: code {i * 7919 % 10007}."


def datanet_snapshot(folder: Path, count: int):  # type: ignore[no-untyped-def]
    """A datanet of ``count`` short instruction records from 10 contributors."""
    from openledger.crypto import Account
    from openledger.data import Datanet, InstructionRecord

    datanet = Datanet.create(folder, name="speed", schema=InstructionRecord)
    accounts = [Account.create() for _ in range(10)]
    records = [
        InstructionRecord(instruction=question, response=answer)
        for question, answer in map(item, range(count))
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


def build(args: argparse.Namespace) -> tuple[Any, Path]:
    """Snapshot, train and index (see the module docstring); print the build figures."""
    from openledger.attribution import InfluenceIndex
    from openledger.train import LoraRecipe, finetune

    work = scratch_dir("attr-speed-")
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
        batch_tokens=args.batch_tokens,
    )
    seconds = time.perf_counter() - started
    print(
        f"build: {len(index)} records in {seconds:.0f} s = {len(index) / seconds:.2f} records/s "
        f"(batched, {args.batch_tokens} tokens per pass, model load included); "
        f"{len(index.manifest.layer_names)} LoRA layers, "
        f"{4 * index.width:,} bytes per record, "
        f"{4 * index.width * len(index) / 2**20:.0f} MiB on disk"
    )
    return index, work


def _seconds(run: Any) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    rows = run()
    return time.perf_counter() - started, rows


def compare_build_paths(index: Any, count: int, batch_tokens: int, rounds: int) -> None:
    """Per-record vs batched gradients of the same ``count`` records, interleaved rounds."""
    from openledger.attribution.batched import iter_batch_gradients
    from openledger.attribution.examples import query_example
    from openledger.attribution.gradients import Projector, iter_gradients, lora_pairs

    index._ensure_model()
    model, tokenizer, recipe = index._model, index._tokenizer, index.adapter.recipe
    examples = [query_example(*item(i), tokenizer, recipe) for i in range(count)]
    projector = Projector(index.manifest.projection_dim, index.manifest.projection_seed)
    pairs = lora_pairs(model)

    def batched(tokens: int) -> torch.Tensor:
        rows = torch.zeros(count, index.width)
        for indices, block in iter_batch_gradients(model, pairs, projector, examples, tokens):
            rows[indices] = block
        return rows

    paths = {
        "per-record": lambda: torch.stack(list(iter_gradients(model, pairs, projector, examples))),
        "batched, one record per pass": lambda: batched(1),
        f"batched, {batch_tokens} tokens per pass": lambda: batched(batch_tokens),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    found: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for name, run in paths.items():
            seconds, found[name] = _seconds(run)
            times[name].append(seconds)
    reference, scale = found["per-record"], float(found["per-record"].abs().max())
    print(f"build paths on the same {count} records, {rounds} interleaved rounds (median):")
    for name, seconds in times.items():
        ratios = [old / new for old, new in zip(times["per-record"], seconds, strict=True)]
        difference = float((found[name] - reference).abs().max()) / scale
        print(
            f"  {name}: {count / statistics.median(seconds):.2f} records/s, "
            f"{statistics.median(ratios):.2f}x per-record; max |row - per-record| / max |row| "
            f"= {difference:.1e}"
        )


def query_table(index: Any, counts: list[int], queries: int) -> None:
    """Print the median query time per method over the first N records (tiled beyond)."""
    from openledger.attribution import InfluenceIndex

    methods = ("exact", "datainf", "tracin", "gradcos")
    print(f"| records | {' | '.join(methods)} | query gradient alone |")
    print("|---|---|---|---|---|---|")
    index._ensure_model()
    for count in counts:
        repeats = -(-count // len(index))
        rows = torch.cat([index.grads[0]] * repeats)[:count]
        records = (index.manifest.records * repeats)[:count]
        changed = index.manifest.model_copy(update={"records": records})
        sub = InfluenceIndex(changed, [rows], index.adapter)
        sub._model, sub._tokenizer = index._model, index._tokenizer
        step = max(1, min(count, len(index)) // queries)
        prompts = [item(i * step + 3) for i in range(queries)]
        cells = [f"{timed_queries(sub.with_method(m), prompts):.3f} s" for m in methods]
        times = []
        for prompt in prompts:
            started = time.perf_counter()
            sub.query_gradients(*prompt)
            times.append(time.perf_counter() - started)
        label = f"{count}" + (" (tiled)" if count > len(index) else "")
        print(f"| {label} | " + " | ".join(cells) + f" | {statistics.median(times):.3f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--projection", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--baseline-records", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the build comparison")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see docstring)")
    parser.add_argument("--reuse", help="work folder of an earlier run: time queries only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from openledger.attribution import InfluenceIndex

    print(f"machine: {machine()}")
    print(f"load average at start: {load()}")
    if args.reuse is None:
        index, _ = build(args)
    else:
        folder = Path(args.reuse)
        index = InfluenceIndex.load(folder / "index", folder / "adapter")
        print(f"reused index: {len(index)} records from {folder}")
    count = min(args.baseline_records, len(index))
    compare_build_paths(index, count, args.batch_tokens, args.rounds)
    counts = sorted({c for c in (250, 500, 1000) if c < len(index)} | {len(index), 2000})
    query_table(index, counts, args.queries)
    print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
