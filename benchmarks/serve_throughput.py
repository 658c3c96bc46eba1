"""Serving throughput: our engine (no adapters) vs transformers ``generate`` on one batch.

Workload (benchmarks in ../shared/BENCHMARKS.md, base-model part of "mixed-8"):
SmolLM2-135M-Instruct, fp32, CPU; 16 concurrent requests with short prompts (~16 tokens);
32 new tokens each, greedy, no early stop (EOS banned before 32 tokens on both sides:
``min_new_tokens`` / ``min_tokens``).

Baseline in the same run: transformers ``generate`` on the same 16 prompts as one
left-padded batch. Both are warmed up once; then they alternate for ``--repeats`` rounds.
Prints median tokens/s of both, the median of the per-round ratios, and per-request time
to first token (TTFT) and inter-token latency (ITL) of our engine.

In the same rounds, unless ``--no-int8``: the engine on int8 base weights
(``EngineConfig(quantization="int8")``, float32 arithmetic) and on int8 weights with
bfloat16 dot products (``quantized_compute="bfloat16"``, where the CPU has AVX512-BF16),
each against the fp32 engine (median of per-round ratios), with the bytes of the base's
projection weights and the share of greedy tokens equal to the fp32 engine's; then one
request at a time (64 new tokens, the engines alternating, 5 rounds): each engine's
inter-token latency, what a single chat user sees. Besides wall time,
the process's CPU time is compared too: on a shared, oversubscribed machine it is the
steadier measure of work done.

    python benchmarks/serve_throughput.py [--repeats 3] [--threads N] [--model NAME] [--no-int8]
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
from openledger.serve.layers.linear import Linear

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
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 engines")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = resolve_model(args.model).path
    texts = prompts()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = Engine(args.model, EngineConfig(device="cpu", dtype="float32"))
    variants: dict[str, Engine] = {}
    if not args.no_int8:
        for name, compute in (("int8", "float32"), ("int8 bf16-dot", "bfloat16")):
            config = EngineConfig(
                device="cpu",
                dtype="float32",
                quantization="int8",
                quantized_compute=compute,  # type: ignore[arg-type]
            )
            variants[name] = Engine(args.model, config)
    print(f"machine: {machine()}", flush=True)
    print(f"load average at start (1/5/15 min): {load_average()}", flush=True)
    run_hf(model, tokenizer, texts[:2])
    for warm in (engine, *variants.values()):
        run_ours(warm, texts)  # NOTE: the first steps pack the weights
    hf_times: list[Timing] = []
    our_times: list[Timing] = []
    variant_times: dict[str, list[Timing]] = {name: [] for name in variants}
    variant_last: dict[str, list[RequestOutput]] = {}
    for round_ in range(args.repeats):
        timing, hf_tokens = run_hf(model, tokenizer, texts)
        hf_times.append(timing)
        timing, last = run_ours(engine, texts)
        our_times.append(timing)
        shown = (
            f"HF {hf_times[-1][0]:.1f}/{hf_times[-1][1]:.1f}, ours {timing[0]:.1f}/{timing[1]:.1f}"
        )
        for name, variant in variants.items():
            timing, variant_last[name] = run_ours(variant, texts)
            variant_times[name].append(timing)
            shown += f", {name} {timing[0]:.1f}/{timing[1]:.1f}"
        print(f"round {round_ + 1} (wall/CPU s): {shown}", flush=True)
    report(texts, hf_times, our_times, last, hf_tokens)
    for name, variant in variants.items():
        report_variant(name, variant, engine, variant_times[name], our_times,
                       variant_last[name], last, len(texts))  # fmt: skip
    if variants:
        single_stream({"fp32": engine, **variants}, texts[0])
    print(f"load average at end (1/5/15 min): {load_average()}")


def single_stream(engines: dict[str, Engine], text: str, rounds: int = 5) -> None:
    """One request at a time on each engine, alternating: median inter-token latency."""
    params = SamplingParams(max_tokens=64, min_tokens=64)
    itls: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, each in engines.items():
            output = each.generate([text], params)[0]
            itls[name].append(1000 * (output.metrics.mean_inter_token_latency or 0.0))
    base = statistics.median(itls["fp32"])
    shown = ", ".join(
        f"{name} {statistics.median(values):.1f} ms ({base / statistics.median(values):.2f}x)"
        for name, values in itls.items()
    )
    print(f"one request at a time, ITL median of {rounds} (speed vs fp32): {shown}")


def projection_bytes(engine: Engine) -> int:
    """Bytes of the base's projection weights and LM head as the engine keeps them: int8
    weights (the kernel's panels once packed) and scales, or float32 weights (their
    packed float32 copies not counted)."""
    model = engine.runner.model
    total = 0
    for module in model.modules():
        if isinstance(module, Linear):
            q = module.packed.quantized
            total += module.weight.nbytes if q is None else q.nbytes
    head = model.quantized_head
    if head is not None:
        total += head.nbytes
    else:
        weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head
        total += weight.nbytes
    return total


def common_prefix(a: list[int], b: list[int]) -> int:
    """Tokens before the first difference."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def report_variant(
    name: str,
    variant: Engine,
    engine: Engine,
    times: list[Timing],
    fp32_times: list[Timing],
    last: list[RequestOutput],
    fp32_last: list[RequestOutput],
    requests: int,
) -> None:
    """An int8 engine against the fp32 engine of the same rounds."""
    total = requests * NEW_TOKENS
    rate = total / statistics.median(t[0] for t in times)
    ratio = statistics.median(f[0] / t[0] for f, t in zip(fp32_times, times, strict=True))
    cpu_ratio = statistics.median(f[1] / t[1] for f, t in zip(fp32_times, times, strict=True))
    same = sum(
        common_prefix(o.token_ids, f.token_ids) for o, f in zip(last, fp32_last, strict=True)
    )
    quantized = [
        m.packed.quantized for m in variant.runner.model.modules() if isinstance(m, Linear)
    ]
    bf16 = any(q is not None and q.uses_bf16_dot for q in quantized)
    print(
        f"{name} ({'bfloat16' if bf16 else 'float32'} arithmetic): {rate:7.1f} tok/s wall, "
        f"{ratio:.2f}x the fp32 engine (CPU time {cpu_ratio:.2f}x); projection weights "
        f"{projection_bytes(variant) / 2**20:.0f} MiB vs {projection_bytes(engine) / 2**20:.0f} "
        f"MiB; greedy tokens before the first difference from fp32's: {same}/{total}; "
        f"{latency_summary(last)}"
    )


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
