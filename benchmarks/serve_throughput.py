"""Serving throughput: our engine (no adapters) vs transformers ``generate`` on one batch.

Workload (benchmarks in ../shared/BENCHMARKS.md, base-model part of "mixed-8"):
SmolLM2-135M-Instruct, fp32, CPU; 16 concurrent requests with short prompts (~16 tokens);
32 new tokens each, greedy, no early stop (EOS banned before 32 tokens on both sides:
``min_new_tokens`` / ``min_tokens``).

Baseline in the same run: transformers ``generate`` on the same 16 prompts as one
left-padded batch. Both are warmed up once; then they alternate for ``--repeats`` rounds.
Prints median tokens/s of both, the median of the per-round ratios, and per-request time
to first token (TTFT) and inter-token latency (ITL) of our engine. Besides wall time,
the process's CPU time is compared too: on a shared, oversubscribed machine it is the
steadier measure of work done.

    python benchmarks/serve_throughput.py [--repeats 3] [--threads N] [--model NAME]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _machine import describe_machine  # benchmarks/ is the script folder
from transformers import AutoModelForCausalLM, AutoTokenizer

from openledger.models import resolve_model
from openledger.serve import Engine, EngineConfig, RequestOutput, SamplingParams

TOPICS = [
    "the water cycle", "black holes", "photosynthesis", "the Roman empire", "prime numbers",
    "volcanoes", "machine learning", "the French revolution", "honey bees", "plate tectonics",
    "the printing press", "quantum computing", "coral reefs", "the Silk Road", "vaccines",
    "renewable energy",
]  # fmt: skip
NEW_TOKENS = 32


def machine() -> str:
    """CPU model, core count and library versions."""
    return describe_machine(
        f"{torch.get_num_threads()} torch threads", f"torch {torch.__version__}"
    )


def load_average() -> str:
    """The machine's load averages: other jobs competing for the cores."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def prompts() -> list[str]:
    """16 short prompts, about 16 tokens each with SmolLM2's tokenizer."""
    return [
        f"Write two short sentences for a child that explain {topic}, please." for topic in TOPICS
    ]


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def clock() -> Timing:
    """Wall and process CPU time now."""
    return time.perf_counter(), time.process_time()


def since(start: Timing) -> Timing:
    """Wall and CPU seconds since ``start``."""
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def run_hf(
    model: torch.nn.Module, tokenizer: object, texts: list[str]
) -> tuple[Timing, list[list[int]]]:
    """One batched greedy ``generate``; returns (timing, new tokens per prompt)."""
    batch = tokenizer(texts, return_tensors="pt", padding=True)  # type: ignore[operator]
    start = clock()
    with torch.inference_mode():
        out = model.generate(  # type: ignore[operator]
            **batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
        )
    timing = since(start)
    width = batch["input_ids"].shape[1]
    return timing, [row[width:].tolist() for row in out]


def run_ours(engine: Engine, texts: list[str]) -> tuple[Timing, list[RequestOutput]]:
    """All prompts added at once, stepped to completion; returns (timing, outputs)."""
    params = SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    start = clock()
    outputs = engine.generate(texts, params)
    return since(start), outputs


def latency_summary(outputs: list[RequestOutput]) -> str:
    """Median and worst TTFT, median per-request mean ITL, in milliseconds."""
    ttfts = [o.metrics.time_to_first_token or 0.0 for o in outputs]
    itls = [o.metrics.mean_inter_token_latency or 0.0 for o in outputs]
    return (
        f"TTFT p50 {1000 * statistics.median(ttfts):.0f} ms, max {1000 * max(ttfts):.0f} ms; "
        f"ITL p50 {1000 * statistics.median(itls):.1f} ms"
    )


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = resolve_model(args.model).path
    texts = prompts()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = Engine(args.model, EngineConfig(device="cpu", dtype="float32"))
    print(f"machine: {machine()}", flush=True)
    print(f"load average at start (1/5/15 min): {load_average()}", flush=True)
    run_hf(model, tokenizer, texts[:2])
    run_ours(engine, texts[:2])
    hf_times: list[Timing] = []
    our_times: list[Timing] = []
    for round_ in range(args.repeats):
        timing, hf_tokens = run_hf(model, tokenizer, texts)
        hf_times.append(timing)
        timing, last = run_ours(engine, texts)
        our_times.append(timing)
        shown = (
            f"HF {hf_times[-1][0]:.1f}/{hf_times[-1][1]:.1f}, ours {timing[0]:.1f}/{timing[1]:.1f}"
        )
        print(f"round {round_ + 1} (wall/CPU s): {shown}", flush=True)
    report(texts, hf_times, our_times, last, hf_tokens)
    print(f"load average at end (1/5/15 min): {load_average()}")


def report(
    texts: list[str],
    hf_times: list[Timing],
    our_times: list[Timing],
    last: list[RequestOutput],
    hf_tokens: list[list[int]],
) -> None:
    """Print tokens/s (wall and per CPU second), ratios, latencies and agreement."""
    total = len(texts) * NEW_TOKENS
    prompt_lens = [len(o.prompt_token_ids) for o in last]
    span = f"{min(prompt_lens)}-{max(prompt_lens)}"
    print(
        f"workload: {len(texts)} requests, prompts {span} tokens, {NEW_TOKENS} new tokens, greedy,"
    )
    print(f"          fp32 CPU; medians of {len(hf_times)} rounds")
    for index, label in ((0, "wall"), (1, "CPU ")):
        hf_rate = total / statistics.median(t[index] for t in hf_times)
        our_rate = total / statistics.median(t[index] for t in our_times)
        # NOTE: the ratio is the median of per-round ratios (each round runs both back to
        # back), steadier on a shared machine than a ratio of separate medians.
        ratio = statistics.median(
            h[index] / o[index] for h, o in zip(hf_times, our_times, strict=True)
        )
        print(
            f"tokens per {label} second: HF generate {hf_rate:7.1f}, openledger Engine "
            f"{our_rate:7.1f}, ratio ours/HF {ratio:.2f}x"
        )
    print(f"ours (last round): {latency_summary(last)}")
    same = sum(o.token_ids == h for o, h in zip(last, hf_tokens, strict=True))
    print(f"greedy outputs identical to the padded HF batch: {same}/{len(texts)}")


if __name__ == "__main__":
    main()
