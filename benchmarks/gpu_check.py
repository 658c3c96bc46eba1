"""The GPU report and checks (run it whenever a CUDA device is lent).

1. ``pytest tests/gpu`` (skip with ``--skip-pytest``): Triton decode attention, the engine
   on CUDA in float32, bfloat16 and float16 against transformers and PEFT, CUDA graphs on
   and off, FP8 and int8 bases.
2. Triton SGMV (prefill) and BGMV (decode) LoRA kernels against the einsum reference,
   ranks {8, 16, 64} x adapter counts {1, 8, 64} x hidden sizes of real models
   (576 SmolLM2-135M, 4096 Llama-3-8B, expand widths up to 14336) x fp16, bf16.
3. The engine report (issue 20's acceptance figures, each printed beside its target): a
   Llama-3-8B-shaped model with random weights (``--layers`` of its 32 layers, default
   all, written once to a temporary folder; no download) in bf16, then with FP8 weights;
   64 concurrent requests x 128-token prompts x 128 new tokens: no LoRA, then 100
   registered rank-16 all-linear adapters, 64 distinct per batch, a just-in-time pass
   (each request's adapter read from disk and installed as it is admitted) and a
   resident pass; CUDA graphs on, then off; output tokens/s, ITL p50/p99, TTFT p50; GPU
   memory of the base and of the adapter slots without the KV cache
   (``torch.cuda.memory_allocated``); cold adapter loads (disk -> host -> slot) p50/p99.
4. SGMV/BGMV vs the torch paths (per-adapter matmuls; one bmm over every adapter) on one
   Llama-3-8B q|k|v projection: wall time per call, and GPU time replayed from a CUDA
   graph (no launch or Python time).

Prints the device name first; a part that raises is reported and the next still runs.
``--cpu-smoke`` runs every part but pytest on tiny shapes on CPU (Triton under
``TRITON_INTERPRET=1``, fp32/fp16 only, no CUDA graphs) plus a tiny engine with two
adapters on both backends (tokens must agree), to check the script itself without a GPU.

    python benchmarks/gpu_check.py [--layers 32] [--skip-pytest] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import platform
import sys
import time
import traceback

if "--cpu-smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
from _scratch import scratch_dir

from openledger.serve.ops.lora_batched import BatchedPlan, add_lora_batched, stack_group_weights
from openledger.serve.ops.lora_reference import lora_expand_reference, lora_shrink_reference
from openledger.serve.ops.lora_step import LoraStep
from openledger.serve.ops.lora_torch import LoraSlice, LoraWeights, add_lora

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def stacks(slots: int, rank: int, hidden: int, out: int, dtype: torch.dtype, device: str):  # type: ignore[no-untyped-def]
    """Random stacked A/B with each slot's own rank (rows past it zero)."""
    ranks = torch.tensor([max(1, rank - (s % 4)) for s in range(slots)], dtype=torch.int32)
    a = torch.zeros(slots, rank, hidden)
    b = torch.zeros(slots, out, rank)
    for s, r in enumerate(ranks.tolist()):
        a[s, :r] = torch.randn(r, hidden) / hidden**0.5
        b[s, :, :r] = torch.randn(out, r) / r**0.5
    return a.to(device, dtype), b.to(device, dtype), ranks.to(device)


def check_kernels(device: str, dtypes: list[torch.dtype], sizes: list[tuple[int, int]],
                  ranks: list[int], counts: list[int], tokens: int) -> bool:  # fmt: skip
    """Every kernel against the reference; prints the worst relative error per case."""
    from openledger.serve.ops.lora_triton import bgmv_expand, bgmv_shrink, sgmv_expand, sgmv_shrink

    ok = True
    for dtype, (hidden, out), rank, count in itertools.product(dtypes, sizes, ranks, counts):
        a, b, r = stacks(count, rank, hidden, out, dtype, device)
        idx = torch.randint(-1, count, (tokens,), device=device).sort().values
        x = torch.randn(tokens, hidden, device=device, dtype=dtype)
        want = lora_expand_reference(lora_shrink_reference(x, a, idx), b, idx)
        seg = LoraStep.from_token_slots(idx.tolist(), x.device).lora_segments
        got_s = torch.zeros(tokens, out, device=device, dtype=dtype)
        sgmv_expand(sgmv_shrink(x, a, r, seg), b, r, seg, got_s)
        got_b = torch.zeros(tokens, out, device=device, dtype=dtype)
        bgmv_expand(bgmv_shrink(x, a, r, idx), b, r, idx, got_b)
        scale = want.abs().max().item() + 1e-6
        err = max((g.float() - want).abs().max().item() / scale for g in (got_s, got_b))
        good = err < (2e-2 if dtype == torch.bfloat16 else 5e-3)
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {dtype!s:15s} H={hidden:5d} O={out:5d} "
              f"r={rank:2d} slots={count:2d}: max rel err {err:.1e}", flush=True)  # fmt: skip
    return ok


def synchronize(device: str) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device: str = "cuda", repeats: int = 20) -> float:  # type: ignore[no-untyped-def]
    """Median milliseconds of ``fn`` after a warm-up (the device synchronised)."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def device_time(fn, repeats: int = 20) -> float | None:  # type: ignore[no-untyped-def]
    """Milliseconds of GPU work per call of ``fn``, replayed from a CUDA graph (no launch
    or Python time); None where ``fn`` cannot be captured (it synchronises)."""
    fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(10):
                fn()
    except RuntimeError:
        torch.cuda.synchronize()
        return None
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) / (10 * repeats)


def kernel_speed(device: str = "cuda", hidden: int = 4096, out: int = 6144,
                 sizes: tuple[int, int] = (64, 4096), repeats: int = 20) -> None:  # fmt: skip
    """SGMV/BGMV vs the torch paths on one q|k|v projection (Llama-3-8B), 64 adapters, r 16:
    wall time of one call (launches and Python included) and, on CUDA, GPU time alone."""
    rank, count = 16, 64
    dtype = torch.float16 if device == "cuda" else torch.float32
    a, b, r = stacks(count, rank, hidden, out, dtype, device)
    slots = [LoraWeights(a[s], (LoraSlice(0, rank, 0, out, b[s]),)) for s in range(count)]
    for tokens in sizes:
        label = f"{'decode' if tokens == sizes[0] else 'prefill'} {tokens} tokens"
        idx = (torch.arange(tokens, device=device) * count // tokens).to(torch.int64)
        if tokens == sizes[0]:
            idx = idx[torch.randperm(tokens, device=device)]
        x = torch.randn(tokens, hidden, device=device, dtype=dtype)
        y = torch.zeros(tokens, out, device=device, dtype=dtype)
        step = LoraStep.from_token_slots(idx.tolist(), x.device)
        seg, groups = step.lora_segments, step.groups
        order = idx.argsort()  # the batched path reads tokens grouped by adapter
        runs = [[(g * tokens // count, (g + 1) * tokens // count)] for g in range(count)]
        plan, stacked = (
            BatchedPlan.from_runs(runs, x.device),
            stack_group_weights(slots, hidden, out),
        )
        assert stacked is not None
        x_sorted = x[order]
        paths = {
            "SGMV": functools.partial(_sgmv, x, a, b, r, seg, y),
            "BGMV": functools.partial(_bgmv, x, a, b, r, idx, y),
            "torch per-adapter": functools.partial(add_lora, y, x, groups, slots),
            "torch batched": functools.partial(add_lora_batched, y, x_sorted, plan, stacked),
        }
        wall = {name: time_it(fn, device, repeats) for name, fn in paths.items()}
        print(f"{label}, wall per call: " + ", ".join(f"{n} {t:.3f} ms" for n, t in wall.items()),
              flush=True)  # fmt: skip
        if device == "cuda":
            gpu = {name: device_time(fn) for name, fn in paths.items()}
            print(f"{label}, GPU time (CUDA graph): " + ", ".join(
                f"{n} {'n/a' if t is None else f'{1000 * t:.1f} us'}" for n, t in gpu.items()),
                flush=True)  # fmt: skip


def _sgmv(x, a, b, r, seg, y) -> None:  # type: ignore[no-untyped-def]
    from openledger.serve.ops.lora_triton import sgmv_expand, sgmv_shrink

    sgmv_expand(sgmv_shrink(x, a, r, seg), b, r, seg, y)


def _bgmv(x, a, b, r, idx, y) -> None:  # type: ignore[no-untyped-def]
    from openledger.serve.ops.lora_triton import bgmv_expand, bgmv_shrink

    bgmv_expand(bgmv_shrink(x, a, r, idx), b, r, idx, y)


LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                 head_dim=128)  # fmt: skip

# The acceptance targets on an H100 (8B shape, 32 layers, 64 concurrent requests).
TARGET_TOKENS = 5000.0  # output tokens/s without LoRA
TARGET_LORA_RATIO = 0.9  # 100 adapters resident / no LoRA
TARGET_ITL_MS = 20.0  # ITL p50
TARGET_MEMORY_GB = 12.0  # FP8 base + 32 slots of rank-16 all-linear adapters, no KV cache
TARGET_COLD_LOAD_MS = 50.0  # cold adapter load p99


def verdict(value: float, target: float, *, at_least: bool, applies: bool) -> str:
    """``(target >= 5,000: met)``; the target applies to the full 32-layer shape only."""
    sign = ">=" if at_least else "<="
    met = value >= target if at_least else value <= target
    note = ("met" if met else "NOT met") if applies else "applies to 32 layers"
    return f"(target {sign} {target:,g}: {note})"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def write_model(root, layers: int, shape: dict[str, int], device: str, dtype: str):  # type: ignore[no-untyped-def]
    """A Llama-3-8B-shaped checkpoint with random weights and one rank-16 all-linear
    adapter (registered under 100 names: each name is read from disk on its own)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from openledger.models import tiny_config, tiny_tokenizer

    config = tiny_config("llama", num_hidden_layers=layers, **shape)
    start = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(root / "base")
    tiny_tokenizer(config.vocab_size).save_pretrained(root / "base")
    lora = LoraConfig(r=16, target_modules=TARGETS, init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(root / "adapter")
    del model
    print(f"model and adapter written in {time.perf_counter() - start:.1f} s", flush=True)
    return config


def kv_bytes(engine) -> int:  # type: ignore[no-untyped-def]
    """Bytes of the engine's KV cache (excluded from the memory figures)."""
    layers = engine.runner.model.attention_layers()
    return sum(t.numel() * t.element_size() for a in layers for t in (a.k_cache, a.v_cache))


def device_memory(engine, device: str) -> tuple[float, float] | None:  # type: ignore[no-untyped-def]
    """GB allocated now and at peak since the last reset, KV cache excluded (CUDA only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    kv = kv_bytes(engine)
    now = torch.cuda.memory_allocated() - kv
    return now / 1e9, (torch.cuda.max_memory_allocated() - kv) / 1e9


def report_memory(engine, precision: str, base: tuple[float, float],  # type: ignore[no-untyped-def]
                  loaded: tuple[float, float], adapters: int, full: bool) -> None:  # fmt: skip
    """Base and adapter-slot memory: the Triton stacks are allocated for every slot at the
    first install; each resident adapter also keeps its own device copy (the torch batched
    path's). So base + 32 slots holding 32 adapters = base + 32/num_slots of the stacks +
    32 adapters' copies, from what was measured with ``adapters`` loaded."""
    state = engine.runner.lora
    stacks = (
        sum(
            t.numel() * t.element_size()
            for stack in getattr(state.backend, "stacks", {}).values()
            for t in (stack.a, stack.b, stack.ranks)
        )
        / 1e9
    )
    slots = state.num_slots
    copies = max(0.0, loaded[0] - base[0] - stacks) / max(adapters, 1)
    with_32 = base[0] + stacks * 32 / slots + 32 * copies
    target = ""
    if "fp8" in precision:
        target = verdict(with_32, TARGET_MEMORY_GB, at_least=False, applies=full)
    print(f"[{precision}] GPU memory without the KV cache: base {base[0]:.2f} GB (peak while "
          f"loading {base[1]:.2f} GB); LoRA stacks of {slots} slots {stacks:.2f} GB; "
          f"{adapters} resident adapters' own copies {adapters * copies:.2f} GB; base + 32 "
          f"slots holding 32 adapters {with_32:.2f} GB {target}", flush=True)  # fmt: skip


def timed_pass(engine, prompts, params, device: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One ``generate`` of every request at once: output tokens/s, ITL p50/p99 over every
    gap of every request, TTFT p50 (milliseconds)."""
    synchronize(device)
    start = time.perf_counter()
    outputs = engine.generate(prompts, params)
    synchronize(device)
    wall = time.perf_counter() - start
    gaps = [g for o in outputs for g in o.metrics.inter_token_latencies]
    ttfts = [o.metrics.time_to_first_token or 0.0 for o in outputs]
    return {
        "rate": sum(len(o.token_ids) for o in outputs) / wall,
        "wall": wall,
        "itl50": 1000 * percentile(gaps, 0.5),
        "itl99": 1000 * percentile(gaps, 0.99),
        "ttft50": 1000 * percentile(ttfts, 0.5),
    }


def engine_report(layers: int, device: str = "cuda", shape: dict[str, int] = LLAMA3_8B,
                  requests: int = 64, prompt: int = 128, new: int = 128,
                  adapters: int = 100, cold_loads: int = 32) -> None:  # fmt: skip
    """The GPU report: a Llama-3-8B-shaped engine (``layers`` of its 32 layers) in bf16 and
    FP8, ``requests`` concurrent requests x ``prompt`` tokens x ``new`` tokens, without LoRA
    and with ``adapters`` registered rank-16 all-linear adapters, each request with its own
    (64 distinct): a just-in-time pass (each adapter read from disk and installed as its
    request is admitted) and a resident pass; CUDA graphs on, then off (resident pass); the
    memory of the base and the adapter slots without the KV cache; cold adapter loads."""
    from openledger.serve import Engine, EngineConfig, SamplingParams

    root = scratch_dir("gpu-check-")
    full = layers == 32 and shape is LLAMA3_8B
    dtype = "bfloat16" if device == "cuda" else "float32"
    config = write_model(root, layers, shape, device, dtype)
    names = [f"a{i}" for i in range(adapters)]
    used = [names[(i * 37) % adapters] for i in range(requests)]  # NOTE: distinct: 37 _|_ 100
    spare = [n for n in names if n not in set(used)] or names

    def prompts(salt: int) -> list[list[int]]:  # other prompts each pass: no cached prefixes
        return [
            [1 + (i * 7 + j + 997 * salt) % (config.vocab_size - 1) for j in range(prompt)]
            for i in range(requests)
        ]

    def params(choice: list[str] | None, tokens: int = new) -> list[SamplingParams]:
        return [
            SamplingParams(
                max_tokens=tokens,
                min_tokens=tokens,
                adapter=None if choice is None else choice[i % len(choice)],
            )
            for i in range(requests)
        ]

    for quantization in (None, "fp8"):
        precision = f"{dtype}" if quantization is None else f"fp8 weights, {dtype} activations"
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        engine = Engine(
            root / "base",
            EngineConfig(
                device=device,
                dtype=dtype,  # type: ignore[arg-type]
                max_num_seqs=requests,
                max_adapter_host_memory=4 * 2**30,
                kv_cache_memory=8 * 2**30,
                quantization=quantization,
            ),
        )
        graphs = engine.runner.graphs
        state = "on" if graphs else f"off ({engine.runner.graphs_off_reason})"
        took = time.perf_counter() - start
        print(f"[{precision}] engine built in {took:.1f} s; CUDA graphs {state}", flush=True)
        if quantization == "fp8" and device == "cuda":
            from openledger.serve.layers.quant import _scaled_mm_fits

            probe = torch.zeros(16, 4096, dtype=torch.bfloat16, device=device)
            weight = torch.zeros(16, 4096, device=device).to(torch.float8_e4m3fn)
            how = "yes" if _scaled_mm_fits(probe, weight) else "no, dequantised per call"
            print(f"[{precision}] torch._scaled_mm (W8A8): {how}")
        base_memory = device_memory(engine, device)
        for name in names:
            engine.add_adapter(name, root / "adapter")
        store = engine.adapters
        assert store is not None
        # cold loads: disk -> host -> device slot, adapters no request has used
        times = []
        for name in spare[:cold_loads]:
            use = store.resolve(name)
            begin = time.perf_counter()
            store.prefetch(use)
            store.acquire(use)
            synchronize(device)
            times.append(1000 * (time.perf_counter() - begin))
            store.release(use)
        cold99 = percentile(times, 0.99)
        print(
            f"[{precision}] cold adapter load (disk -> host -> slot, {len(times)} adapters): "
            f"p50 {percentile(times, 0.5):.1f} ms, p99 {cold99:.1f} ms "
            f"{verdict(cold99, TARGET_COLD_LOAD_MS, at_least=False, applies=full)}",
            flush=True,
        )
        slot_memory = device_memory(engine, device)
        if base_memory and slot_memory:
            report_memory(engine, precision, base_memory, slot_memory, len(times), full)
        # warm-up: kernels compiled, the 64-row graphs recorded (no LoRA, and LoRA on
        # adapters the passes do not use, so the just-in-time pass still loads its own)
        engine.generate(prompts(0), params(None, 4))
        engine.generate(prompts(0), params(spare, 4))
        results = {}
        for graphs_on in (True, False) if graphs is not None else (False,):
            engine.runner.graphs = graphs if graphs_on else None
            label = f"[{precision}, graphs {'on' if graphs_on else 'off'}]"
            passes = [("no LoRA", None, 1)]
            if graphs_on or graphs is None:
                passes.append((f"{adapters} adapters, just in time", used, 2))
            passes.append((f"{adapters} adapters, resident", used, 3))
            for what, choice, salt in passes:
                result = timed_pass(
                    engine, prompts(salt + 10 * (not graphs_on)), params(choice), device
                )
                results[(graphs_on, what)] = result
                line = (
                    f"{label} {what}: {result['rate']:,.0f} tok/s ({result['wall']:.2f} s), "
                    f"ITL p50 {result['itl50']:.1f} ms / p99 {result['itl99']:.1f} ms, "
                    f"TTFT p50 {result['ttft50']:.0f} ms"
                )
                if what == "no LoRA" and quantization is None:
                    line += " " + verdict(
                        result["rate"], TARGET_TOKENS, at_least=True, applies=full
                    )
                print(line, flush=True)
                if "resident" not in what:
                    continue
                plain = results[(graphs_on, "no LoRA")]
                ratio = result["rate"] / plain["rate"]
                print(
                    f"{label} resident LoRA / no LoRA: {ratio:.2f}x "
                    f"{verdict(ratio, TARGET_LORA_RATIO, at_least=True, applies=full)}; "
                    f"ITL p50 with LoRA {result['itl50']:.1f} ms "
                    f"{verdict(result['itl50'], TARGET_ITL_MS, at_least=False, applies=full)}",
                    flush=True,
                )
        engine.runner.graphs = graphs
        if graphs is not None:
            print(
                f"[{precision}] graph replays: {graphs.stats.replayed}, eager decode steps: "
                f"{graphs.stats.eager_decode}, recordings: {dict(graphs.stats.captured)}"
            )
        del engine, store, graphs
        if device == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()


def smoke_engine() -> bool:
    """A tiny engine with two adapters: Triton (interpreted) and torch tokens agree."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from openledger.models import save_tiny_model
    from openledger.serve import Engine, EngineConfig, SamplingParams

    root = scratch_dir("gpu-check-smoke-")
    base = save_tiny_model(root / "base", "llama", seed=4)
    for index, targets in enumerate((TARGETS, ["q_proj", "v_proj"])):
        torch.manual_seed(index)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lora = LoraConfig(r=4 + 2 * index, target_modules=targets, init_lora_weights=False)
        get_peft_model(model, lora).save_pretrained(str(root / f"a{index}"))
    prompts = [[5, 9, 33, 7, 120], [44, 2, 9], [7, 7, 1, 90]]
    params = [SamplingParams(max_tokens=4, min_tokens=4, adapter=a)
              for a in ("a0", "a1", {"a0": 0.5, "a1": -1.0})]  # fmt: skip
    tokens = {}
    for backend in ("torch", "triton"):
        engine = Engine(base, EngineConfig(device="cpu", max_num_seqs=4, block_size=4,
                                           num_blocks=32, lora_backend=backend))  # fmt: skip
        for index in range(2):
            engine.add_adapter(f"a{index}", root / f"a{index}")
        tokens[backend] = [out.token_ids for out in engine.generate(prompts, params)]
    same = tokens["torch"] == tokens["triton"]
    print(f"{'ok  ' if same else 'FAIL'} tiny engine, Triton vs torch LoRA tokens: {tokens}")
    return same


def run_gpu_tests() -> bool:
    """``pytest tests/gpu`` in a child process (the engine tests on CUDA); True if it passed."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/gpu"], cwd=root, check=False)  # fmt: skip
    return done.returncode == 0


def part(name: str, fn) -> bool:  # type: ignore[no-untyped-def]
    """Run one part; a part that raises is reported and the next parts still run."""
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        ok = fn() is not False
    except Exception:
        traceback.print_exc()
        ok = False
    print(f"== {name}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - start:.1f} s",
          flush=True)  # fmt: skip
    return ok


def main() -> None:
    """Run every check; exit 1 if a kernel disagrees with the reference or a part fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="of the 8B shape's 32")
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--skip-pytest", action="store_true", help="do not run pytest tests/gpu")
    args = parser.parse_args()
    if args.cpu_smoke:
        print("device: CPU under TRITON_INTERPRET=1 (smoke test of this script only)")
        tiny = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16)  # fmt: skip
        ok = part("kernels", lambda: check_kernels(
            "cpu", [torch.float32, torch.float16], [(64, 96)], [8, 16], [1, 8], 24))  # fmt: skip
        ok &= part("kernel speed", lambda: kernel_speed("cpu", 64, 96, (8, 32), repeats=1))
        ok &= part("engine", lambda: engine_report(
            2, "cpu", tiny, requests=4, prompt=8, new=4, adapters=6, cold_loads=2))  # fmt: skip
        ok &= part("tiny engine", smoke_engine)
        sys.exit(0 if ok else 1)
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, host: {host}")
    ok = args.skip_pytest or part("pytest tests/gpu", run_gpu_tests)
    sizes = [(576, 576), (576, 1536), (4096, 6144), (4096, 14336), (14336, 4096)]
    ok &= part("kernels", lambda: check_kernels(
        "cuda", [torch.float16, torch.bfloat16], sizes, [8, 16, 64], [1, 8, 64], 256))  # fmt: skip
    ok &= part("engine", lambda: engine_report(args.layers))
    ok &= part("kernel speed", kernel_speed)  # NOTE: last: it captures CUDA graphs
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
