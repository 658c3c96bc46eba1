"""Multi-adapter serving: workload "mixed-8" against PEFT's mixed-adapter ``generate``.

Workload (../shared/BENCHMARKS.md): SmolLM2-135M-Instruct, fp32, CPU; 8 LoRA adapters of
rank 16 on all linear projections with random non-zero weights; 16 concurrent requests,
adapters assigned round-robin; ~16-token prompts; 32 new tokens, greedy, no early stop.

Baselines measured in the same run, alternating with ours for ``--repeats`` rounds (medians):
transformers + PEFT one batched ``generate(adapter_names=[...])``; transformers base model
alone on the same batch; our engine with no adapters; engines with the same adapters and
``EngineConfig(lora_backend="torch")`` (the batched ``bmm`` path on steady steps instead of
the compiled CPU LoRA kernel) and also ``lora_batched_decode=False`` (matmuls per adapter per
projection). ``--profile`` also
prints the LoRA share of one mixed-8 run (torch.profiler). Then: cold load of one adapter
(safetensors on local disk -> usable in a device slot) p50/p99; resident memory with 1, 100
and 1,000 registered adapters; 1,000 adapters served round-robin through 32 device slots.

DoRA mixed-8 (``--dora``, or ``--dora-only`` for just these rows and ours LoRA mixed-8):
the same workload with 8 DoRA adapters (rank 16, all linear, random B and magnitudes).
PEFT refuses a mixed batch of DoRA adapters (``generate(adapter_names=...)``: "Cannot pass
`adapter_names` when DoRA is enabled"), so its baseline is PEFT's DoRA ``generate`` once per
adapter over that adapter's requests (8 batched calls of 2), one after another, with
``peft.helpers.DoraCaching`` on (the weight norms and ``B A`` kept between forward passes
instead of recomputed in each: without it one run took over 10 minutes here); the greedy
tokens of both are compared.

    python benchmarks/serve_adapters.py [--repeats 3] [--threads N] [--skip-thousand] [--profile]
        [--dora | --dora-only]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _scratch import scratch_dir
from serve_throughput import (
    NEW_TOKENS,
    Timing,
    clock,
    load_average,
    machine,
    prompts,
    run_hf,
    run_ours,
    since,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from openledger.models import resolve_model
from openledger.serve import Engine, EngineConfig, RequestOutput, SamplingParams

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NUM_ADAPTERS = 8


def make_adapters(folder: str, root: Path, *, dora: bool = False) -> list[Path]:
    """8 rank-16 all-linear PEFT adapters with random non-zero A and B (DoRA: and random
    magnitudes, within 10% of the weight norms)."""
    from peft import LoraConfig, get_peft_model

    paths = []
    prefix = "d" if dora else "a"
    for index in range(NUM_ADAPTERS):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        config = LoraConfig(
            r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False, use_dora=dora
        )
        torch.manual_seed(index)
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0.0, 0.01)
            elif "lora_magnitude_vector" in name:
                param.data.mul_(torch.empty_like(param).uniform_(0.9, 1.1))
        peft_model.save_pretrained(root / f"{prefix}{index}")
        paths.append(root / f"{prefix}{index}")
    return paths


def peft_model(folder: str, adapters: list[Path]) -> torch.nn.Module:
    """One PeftModel holding every adapter (for the mixed-adapter batch)."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapters[0], adapter_name="a0")
    for index, path in enumerate(adapters[1:], start=1):
        model.load_adapter(path, adapter_name=f"a{index}")
    return model.eval()


def run_peft(model: torch.nn.Module, tokenizer: object, texts: list[str]) -> Timing:
    """PEFT's mixed-adapter batch: one ``generate`` with ``adapter_names``."""
    batch = tokenizer(texts, return_tensors="pt", padding=True)  # type: ignore[operator]
    names = [f"a{i % NUM_ADAPTERS}" for i in range(len(texts))]
    start = clock()
    with torch.inference_mode():
        model.generate(  # type: ignore[operator]
            **batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
            adapter_names=names,
        )  # fmt: skip
    return since(start)


def run_peft_grouped(
    model: torch.nn.Module, tokenizer: object, texts: list[str]
) -> tuple[Timing, list[list[int]]]:
    """PEFT's DoRA generate, one batched call per adapter over its requests (round-robin
    assignment, as in the mixed batch); returns (timing, new tokens per prompt)."""
    tokens: list[list[int]] = [[] for _ in texts]
    start = clock()
    for adapter in range(NUM_ADAPTERS):
        rows = list(range(adapter, len(texts), NUM_ADAPTERS))
        batch = tokenizer([texts[r] for r in rows], return_tensors="pt", padding=True)  # type: ignore[operator]
        model.set_adapter(f"a{adapter}")  # type: ignore[operator]
        with torch.inference_mode():
            out = model.generate(  # type: ignore[operator]
                **batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )
        width = batch["input_ids"].shape[1]
        for row, generated in zip(rows, out, strict=True):
            tokens[row] = generated[width:].tolist()
    return since(start), tokens


def run_mixed(engine: Engine, texts: list[str]) -> tuple[Timing, list[RequestOutput]]:
    """Our engine, adapters round-robin over the requests."""
    params = [
        SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, adapter=f"a{i % NUM_ADAPTERS}")
        for i in range(len(texts))
    ]
    start = clock()
    outputs = engine.generate(texts, params)
    return since(start), outputs


def engine_with(model: str, adapters: list[Path], **paths: Any) -> Engine:
    """An engine on CPU float32 with the mixed-8 adapters and these path settings
    (``EngineConfig`` fields: ``lora_backend``, ``lora_batched_decode`` ...)."""
    engine = Engine(model, EngineConfig(device="cpu", dtype="float32", **paths))
    for index, path in enumerate(adapters):
        engine.add_adapter(f"a{index}", path)
    return engine


def profile_lora(engine: Engine, texts: list[str]) -> None:
    """torch.profiler over one mixed-8 run: the LoRA updates' share of the CPU time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from openledger.serve.layers.linear import Linear

    class Timed:
        def __init__(self, hook: Any) -> None:
            self.hook = hook

        def apply(self, out: torch.Tensor, x: torch.Tensor) -> None:
            with record_function("lora_update"):
                self.hook.apply(out, x)

    linears = [m for m in engine.runner.model.modules() if isinstance(m, Linear) and m.lora]
    hooks = [m.lora for m in linears]
    for linear in linears:
        linear.lora = Timed(linear.lora)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof, record_function("generate"):
            run_mixed(engine, texts)
    finally:
        for linear, hook in zip(linears, hooks, strict=True):
            linear.lora = hook
    events = {e.key: e for e in prof.key_averages()}
    total = events["generate"].cpu_time_total
    lora = events["lora_update"]
    print(
        f"profile: LoRA updates {lora.cpu_time_total / 1e3:.0f} ms of {total / 1e3:.0f} ms "
        f"({100 * lora.cpu_time_total / total:.1f}%), {lora.count} calls, "
        f"{lora.cpu_time_total / lora.count:.0f} us each"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def rss_mib() -> float:
    """Resident set size of this process now."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def cold_loads(engine: Engine, source: Path, count: int) -> list[float]:
    """Seconds from registered-on-disk to resident in a device slot, per fresh adapter."""
    store = engine.adapters
    assert store is not None
    seconds = []
    for index in range(count):
        name = f"cold{index}"
        engine.add_adapter(name, source)
        use = store.resolve(name)
        start = time.perf_counter()
        store.acquire(use)
        seconds.append(time.perf_counter() - start)
        store.release(use)
        engine.remove_adapter(name)
    return seconds


def thousand(model: str, source: Path) -> None:
    """Register 1,000 adapters, serve one short request each through 32 slots."""
    config = EngineConfig(
        device="cpu", dtype="float32", max_num_seqs=32, max_adapter_host_memory=256 * 2**20
    )
    engine = Engine(model, config)
    print(f"RSS with the engine and no adapter: {rss_mib():.0f} MiB")
    for index in range(1000):
        engine.add_adapter(f"t{index}", source)
        if index + 1 in (1, 100, 1000):
            print(f"RSS with {index + 1:4d} registered adapters: {rss_mib():.0f} MiB", flush=True)
    params = [SamplingParams(max_tokens=2, adapter=f"t{i}") for i in range(1000)]
    start = time.perf_counter()
    outputs = engine.generate([[1, 504, 2, 3]] * 1000, params)
    wall = time.perf_counter() - start
    assert engine.adapters is not None
    print(
        f"1,000 requests, each its own adapter, 32 slots: {wall:.1f} s, "
        f"{len(outputs)} finished, host cache {engine.adapters.host_bytes / 2**20:.0f} MiB, "
        f"RSS {rss_mib():.0f} MiB"
    )


def main() -> None:
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--skip-thousand", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--dora", action="store_true", help="also the DoRA mixed-8 rows")
    parser.add_argument("--dora-only", action="store_true", help="only the DoRA mixed-8 rows")
    args = parser.parse_args()
    if args.threads:  # NOTE: on a loaded machine one thread avoids contended thread pools
        torch.set_num_threads(args.threads)
    folder = str(resolve_model(args.model).path)
    root = scratch_dir("serve-adapters-")
    adapters = make_adapters(folder, root)
    texts = prompts()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    if args.dora or args.dora_only:
        dora_mixed(args.model, folder, root, adapters, tokenizer, texts, args.repeats)
        if args.dora_only:
            return
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    peft = peft_model(folder, adapters)
    engine = engine_with(args.model, adapters)
    backend = engine.adapters.state.backend_name if engine.adapters is not None else "none"
    print(f"machine: {machine()}; LoRA backend: {backend}", flush=True)
    torch_paths = {
        "batched": engine_with(args.model, adapters, lora_backend="torch"),
        "per-adapter": engine_with(
            args.model, adapters, lora_backend="torch", lora_batched_decode=False
        ),
    }
    times = measure(engine, torch_paths, peft, hf, tokenizer, texts, args.repeats)
    report(times, len(texts) * NEW_TOKENS)
    del torch_paths
    if args.profile:
        profile_lora(engine, texts)
    loads = sorted(cold_loads(engine, adapters[0], 50))
    p99 = loads[min(len(loads) - 1, int(0.99 * len(loads)))]
    p50 = statistics.median(loads)
    print(f"cold load (disk -> slot), 50 loads: p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms")
    if not args.skip_thousand:
        del engine, peft, hf
        thousand(args.model, adapters[0])


def dora_mixed(
    model: str,
    folder: str,
    root: Path,
    lora_adapters: list[Path],
    tokenizer: object,
    texts: list[str],
    repeats: int,
) -> None:
    """DoRA mixed-8 against PEFT's DoRA generate per adapter, and against ours LoRA mixed-8
    (DoRA's cost over LoRA in the engine), alternating for ``repeats`` rounds."""
    from peft import PeftModel
    from peft.helpers import DoraCaching

    DoraCaching()(enabled=True)  # NOTE: PEFT's fastest DoRA inference: norms kept, not redone
    adapters = make_adapters(folder, root, dora=True)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, adapters[0], adapter_name="a0")
    for index, path in enumerate(adapters[1:], start=1):
        peft.load_adapter(path, adapter_name=f"a{index}")
    peft.eval()
    engine = engine_with(model, adapters)
    lora = engine_with(model, lora_adapters)
    backend = engine.adapters.state.backend_name if engine.adapters is not None else "none"
    print(f"machine: {machine()}; load {load_average()}; LoRA backend: {backend}", flush=True)
    _, want = run_peft_grouped(peft, tokenizer, texts)
    _, outputs = run_mixed(engine, texts)
    same = sum(o.token_ids == w for o, w in zip(outputs, want, strict=True))
    print(f"DoRA mixed-8: greedy tokens equal to PEFT's for {same}/{len(texts)} requests")
    run_mixed(lora, texts[:8])
    runs = {
        "PEFT DoRA per-adapter generate": lambda: run_peft_grouped(peft, tokenizer, texts)[0],
        "ours DoRA mixed-8": lambda: run_mixed(engine, texts)[0],
        "ours LoRA mixed-8": lambda: run_mixed(lora, texts)[0],
    }
    times = alternate(runs, repeats)
    total = len(texts) * NEW_TOKENS
    rates = {label: total / statistics.median(t[0] for t in ts) for label, ts in times.items()}
    for label, rate in rates.items():
        print(f"{label:32s} {rate:7.1f} tokens/s")
    dora = rates["ours DoRA mixed-8"]
    peft_rate = rates["PEFT DoRA per-adapter generate"]
    print(f"ours DoRA mixed-8 / PEFT DoRA:         {dora / peft_rate:.2f}x")
    print(f"ours DoRA mixed-8 / ours LoRA mixed-8: {dora / rates['ours LoRA mixed-8']:.2f}x")
    print(f"load after: {load_average()}", flush=True)


def measure(
    engine: Engine,
    torch_paths: dict[str, Engine],
    peft: torch.nn.Module,
    hf: torch.nn.Module,
    tokenizer: object,
    texts: list[str],
    repeats: int,
) -> dict[str, list[Timing]]:
    """Warm up once, then alternate every variant for ``repeats`` rounds (``torch_paths``:
    the same adapters on engines with ``lora_backend="torch"``, batched and per-adapter)."""
    runs = {
        "PEFT mixed-8 generate": lambda: run_peft(peft, tokenizer, texts),
        "HF base-only generate": lambda: run_hf(hf, tokenizer, texts)[0],
        "ours base-only": lambda: run_ours(engine, texts)[0],
        "ours mixed-8": lambda: run_mixed(engine, texts)[0],
        "ours mixed-8 kernel off": lambda: run_mixed(torch_paths["batched"], texts)[0],
        "ours mixed-8 per-adapter": lambda: run_mixed(torch_paths["per-adapter"], texts)[0],
    }
    run_peft(peft, tokenizer, texts[:2])
    for warm in (engine, *torch_paths.values()):
        run_mixed(warm, texts[:8])
    return alternate(runs, repeats)


def alternate(runs: dict[str, Any], repeats: int) -> dict[str, list[Timing]]:
    """Each run once per round, in order, for ``repeats`` rounds; the timings by label."""
    times: dict[str, list[Timing]] = {label: [] for label in runs}
    for round_ in range(repeats):
        for label, run in runs.items():
            times[label].append(run())
        shown = ", ".join(f"{label} {t[-1][0]:.1f}" for label, t in times.items())
        print(f"round {round_ + 1} (wall s): {shown}", flush=True)
    return times


def report(times: dict[str, list[Timing]], total: int) -> None:
    """Tokens per wall second of each, and the ratios the issue asks for."""
    rates = {label: total / statistics.median(t[0] for t in ts) for label, ts in times.items()}
    for label, rate in rates.items():
        print(f"{label:26s} {rate:7.1f} tokens/s")
    mixed = rates["ours mixed-8"]
    print(f"ours mixed-8 / PEFT mixed-8:     {mixed / rates['PEFT mixed-8 generate']:.2f}x")
    print(f"ours mixed-8 / ours base-only:   {mixed / rates['ours base-only']:.2f}x")
    print(f"ours mixed-8 / HF base-only:     {mixed / rates['HF base-only generate']:.2f}x")
    print(f"ours mixed-8 / kernel off (bmm): {mixed / rates['ours mixed-8 kernel off']:.2f}x")
    print(f"ours mixed-8 / per-adapter path: {mixed / rates['ours mixed-8 per-adapter']:.2f}x")


if __name__ == "__main__":
    main()
