"""Influence index build: today's path against the fast path, in the same run (SmolLM2 r=8).

    python benchmarks/attribution_index_speed.py [--records 64] [--rounds 3] [--threads 1]

A datanet of ``--records`` distinct instruction records (those of
``attribution_speed.py``) and a rank-8, all-linear LoRA adapter of SmolLM2-135M-Instruct
trained on it for ``--steps`` steps. On the same records, in ``--rounds`` interleaved
rounds (median rates, median of per-round ratios):

- *per-record*: one forward and backward pass per record, full gradients projected
  afterwards (``example_gradient``: the reference), on the first ``--reference-records``;
- *today*: the index build's path until now: records batched by length up to 1,024 padded
  tokens, float32 passes, float32 rows (``gradient_rows`` with its defaults);
- *fast*: the same batches with bfloat16 passes (``torch.autocast``; per-example sums in
  float32) and bfloat16 rows (``compute_dtype="bfloat16", storage_dtype="bfloat16"``).

Agreement, printed beside the rates: DataInf scores of ``--queries`` answers (queries
with the path's own compute dtype) from each path's rows, Pearson with today's float32
scores (which equal the per-record reference's: their largest row difference is printed)
and with the per-record reference on its records; and, on the reference records,
Pearson between projected (``--projection``, and 4x that) and unprojected scores.
The load average is printed before and after: the machine is shared. ``--device cuda``
runs the passes on a GPU (the adapter is still trained on the CPU; rows come back as
float32 on the CPU, which also synchronises each batch for the timings).

``--scoring-only`` times one DataInf query over 2,000 random rows of the SmolLM2 r=8,
k=16 shape stored as float32 and as bfloat16 (the cost of 16-bit rows at query time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _scratch import scratch_dir
from attribution_speed import datanet_snapshot, item, load, machine


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two score vectors."""
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def rows_of(model: Any, projector: Any, examples: list[Any], width: int, **dtypes: str) -> Any:
    """The index rows of ``examples`` by the build's path (in memory)."""
    from openledger.attribution.loading import gradient_rows

    return gradient_rows(model, projector, examples, width, None, False, 1024, **dtypes)


def reference_rows(model: Any, projector: Any, examples: list[Any]) -> torch.Tensor:
    """One forward and backward pass per record (the per-record reference)."""
    from openledger.attribution.gradients import iter_gradients, lora_pairs

    pairs = lora_pairs(model)
    found = iter_gradients(model, pairs, projector, [(e.input_ids, e.labels) for e in examples])
    return torch.stack(list(found))


def func_rows(model: Any, projector: Any, examples: list[Any], width: int) -> torch.Tensor:
    """Per-sample gradients by ``torch.func`` (``vmap`` over ``grad``) in the build's
    batches, each example's full LoRA gradient projected afterwards.

    No attention mask: with right padding and causal attention no real token sees a pad,
    and padded positions learn nothing, so the losses equal the unpadded ones (transformers'
    mask construction branches on the mask's values, which ``vmap`` cannot trace).
    """
    from torch.func import functional_call, grad, vmap

    from openledger.attribution.batched import _padded, length_batches
    from openledger.attribution.gradients import lora_pairs

    pairs = lora_pairs(model)
    keys = [(f"{p.name}.lora_A.default.weight", f"{p.name}.lora_B.default.weight") for p in pairs]
    params = {k: dict(model.named_parameters())[k].detach() for ab in keys for k in ab}

    def loss(weights: dict[str, torch.Tensor], ids: torch.Tensor, labels: torch.Tensor) -> Any:
        out = functional_call(model, weights, (ids[None],), {"use_cache": False})
        return torch.nn.functional.cross_entropy(
            out.logits[0, :-1].float(), labels[1:], ignore_index=-100
        )

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    rows = torch.zeros(len(examples), width)
    pairs_of = [(e.input_ids, e.labels) for e in examples]
    for batch in length_batches([len(ids) for ids, _ in pairs_of], 1024):
        ids, labels, _ = _padded([pairs_of[i] for i in batch], model.device)
        found = per_sample(params, ids, labels)
        for row, index in enumerate(batch):
            parts = [projector.project(found[a][row], found[b][row]) for a, b in keys]
            rows[index] = torch.cat(parts)
    return rows


def datainf(rows: torch.Tensor, layout: Any, queries: torch.Tensor) -> torch.Tensor:
    """DataInf scores ``[Q, n]`` of ``queries`` against ``rows``."""
    from openledger.attribution.influence import DataInfScorer

    return DataInfScorer(rows, layout).scores([queries])


def query_rows(model: Any, tokenizer: Any, recipe: Any, projector: Any, count: int, dtype: str):  # type: ignore[no-untyped-def]
    """Gradient rows of ``count`` answers (records' own answers, every few records)."""
    from openledger.attribution.examples import query_example
    from openledger.attribution.loading import query_gradients

    answers = [query_example(*item(3 + 7 * k), tokenizer, recipe) for k in range(count)]
    return query_gradients(model, projector, answers, (), compute_dtype=dtype)[0]


def scoring_times(count: int, layers: int = 210, width: int = 256, repeats: int = 3) -> None:
    """Seconds per query of DataInf over ``count`` random rows (SmolLM2 r=8, k=16 shape),
    stored as float32 and as bfloat16 (widened to float32 block by block), alternating."""
    from openledger.attribution.gradients import GradientLayout
    from openledger.attribution.influence import DataInfScorer

    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(count, layers * width, generator=generator)
    layout = GradientLayout(
        tuple(f"layer{i}" for i in range(layers)), tuple(range(0, layers * width + 1, width))
    )
    query = torch.randn(layers * width, generator=generator)
    scorers = {
        "float32": DataInfScorer(rows, layout),
        "bfloat16": DataInfScorer(rows.to(torch.bfloat16), layout),
    }
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(repeats + 1):  # the first round warms up
        for name, scorer in scorers.items():
            started = time.perf_counter()
            scorer.scores([query])
            times[name].append(time.perf_counter() - started)
    cells = ", ".join(f"{n} rows {statistics.median(t[1:]):.3f} s" for n, t in times.items())
    print(f"DataInf scoring of one query over {count} records ({layers * width:,} values): {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--reference-records", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--projection", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--func", action="store_true", help="also time torch.func per-sample")
    parser.add_argument("--scoring-only", action="store_true", help="time query scoring only")
    parser.add_argument(
        "--device", default="cpu", help="torch device of the passes (cuda on a GPU)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scoring_only:
        print(f"machine: {machine()}; load average {load()}")
        scoring_times(2000)
        print(f"load average at end: {load()}")
        return

    from openledger.attribution.examples import training_examples
    from openledger.attribution.gradients import GradientLayout, Projector, lora_pairs
    from openledger.attribution.loading import load_adapter
    from openledger.train import LoraRecipe, finetune

    print(f"machine: {machine()}")
    print(f"load average at start: {load()}")
    work = scratch_dir("attr-index-speed-")
    snapshot = datanet_snapshot(work / "dn", args.records)
    recipe = LoraRecipe(
        base_model="smollm2-135m-instruct", r=8, alpha=16, max_steps=args.steps, batch_size=4
    )
    run = finetune(recipe, snapshot, work / "adapter", progress=False)
    model, tokenizer = load_adapter(run.adapter, args.device)
    print(
        f"passes on {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if "cuda" in args.device else "")
    )
    examples, _ = training_examples(list(snapshot.records()), tokenizer, run.adapter.recipe)
    tokens = statistics.mean(len(e.input_ids) for e in examples)
    print(f"{len(examples)} records, {tokens:.0f} tokens on average; {args.steps} steps trained")
    projector = Projector(args.projection)
    layout = GradientLayout.of(lora_pairs(model), projector)
    subset = examples[: args.reference_records]
    paths = {
        "per-record (reference)": lambda: reference_rows(model, projector, subset),
        "today: batched, float32": lambda: rows_of(model, projector, examples, layout.width),
        "fast: batched, bfloat16 passes and rows": lambda: rows_of(
            model,
            projector,
            examples,
            layout.width,
            compute_dtype="bfloat16",
            storage_dtype="bfloat16",
        ),
    }
    if args.func:
        paths["torch.func: vmap(grad), projected after"] = lambda: func_rows(
            model, projector, examples, layout.width
        )
    sizes = {name: len(subset) if "reference" in name else len(examples) for name in paths}
    times: dict[str, list[float]] = {name: [] for name in paths}
    found: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, path in paths.items():
            started = time.perf_counter()
            found[name] = path()
            times[name].append((time.perf_counter() - started) / sizes[name])
    reference, today, fast = (found[name] for name in list(paths)[:3])
    if args.func:
        func = found[list(paths)[3]]
        difference = float((func - today).abs().max()) / float(today.abs().max())
        print(f"torch.func rows vs today's: largest difference {difference:.1e} of the largest")
    scale = float(reference.abs().max())
    print(f"build paths, {args.rounds} interleaved rounds (median seconds per record):")
    for name, seconds in times.items():
        ratios = [old / new for old, new in zip(times[list(paths)[1]], seconds, strict=True)]
        print(
            f"  {name}: {1 / statistics.median(seconds):.2f} records/s, "
            f"{statistics.median(ratios):.2f}x today ({', '.join(f'{r:.2f}' for r in ratios)})"
        )
    difference = float((today[: len(subset)] - reference).abs().max()) / scale
    print(f"  today vs per-record: largest row difference {difference:.1e} of the largest value")

    recipe_of = run.adapter.recipe
    q32 = query_rows(model, tokenizer, recipe_of, projector, args.queries, "float32")
    q16 = query_rows(model, tokenizer, recipe_of, projector, args.queries, "bfloat16")
    s_today, s_fast = datainf(today, layout, q32), datainf(fast, layout, q16)
    s_ref = datainf(reference, layout, q32)
    s_fast_sub = datainf(fast[: len(subset)], layout, q16)
    s_narrow = datainf(today.to(torch.bfloat16), layout, q32)
    rows = [
        ("bfloat16 rows of today's float32 passes vs today, all records", s_narrow, s_today),
        ("fast vs today, all records", s_fast, s_today),
        ("fast vs per-record, reference records", s_fast_sub, s_ref),
        (
            "today vs per-record, reference records",
            datainf(today[: len(subset)], layout, q32),
            s_ref,
        ),
    ]
    print("DataInf scores, Pearson per query (min / mean):")
    for label, got, want in rows:
        values = [pearson(g, w) for g, w in zip(got, want, strict=True)]
        print(f"  {label}: {min(values):.4f} / {statistics.mean(values):.4f}")

    whole = Projector(None)
    unprojected = reference_rows(model, whole, subset)
    layout_whole = GradientLayout.of(lora_pairs(model), whole)
    q_whole = query_rows(model, tokenizer, recipe_of, whole, args.queries, "float32")
    s_whole = datainf(unprojected, layout_whole, q_whole)
    print(f"projected vs unprojected ({layout_whole.width:,} values per record), Pearson:")
    for dim in (args.projection, 4 * args.projection):
        proj = Projector(dim)
        lay = GradientLayout.of(lora_pairs(model), proj)
        got = datainf(
            reference_rows(model, proj, subset),
            lay,
            query_rows(model, tokenizer, recipe_of, proj, args.queries, "float32"),
        )
        values = [pearson(g, w) for g, w in zip(got, s_whole, strict=True)]
        print(
            f"  k={dim} ({lay.width:,} values): min {min(values):.4f}, "
            f"mean {statistics.mean(values):.4f}"
        )
    print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
