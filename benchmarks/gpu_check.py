"""GPU checks for multi-adapter serving (run it whenever a CUDA device is lent).

1. Triton SGMV (prefill) and BGMV (decode) LoRA kernels against the einsum reference,
   ranks {8, 16, 64} x adapter counts {1, 8, 64} x hidden sizes of real models
   (576 SmolLM2-135M, 4096 Llama-3-8B, expand widths up to 14336) x fp16, bf16.
2. Engine throughput on a Llama-3-8B-shaped model with random weights (``--layers`` of
   its 32 layers, written once to a temporary folder; no download), 100 registered
   adapters (rank 16, all linear), 64 concurrent requests: no LoRA, LoRA on the Triton
   backend (the CUDA default), LoRA on the torch backend (EngineConfig(lora_backend='torch')).
   Two passes each: in the first every request's adapter is loaded just in time as the
   request is admitted; in the second the adapters are in their device slots.
3. SGMV/BGMV vs the torch paths (per-adapter matmuls; one bmm over every adapter) on one
   Llama-3-8B q|k|v projection: wall time per call, and GPU time replayed from a CUDA
   graph (no launch or Python time).

Prints the device name first; a part that raises is reported and the next still runs.
``--cpu-smoke`` runs every part on tiny shapes on CPU (Triton under
``TRITON_INTERPRET=1``, fp32/fp16 only) plus a tiny engine with two adapters on both
backends (tokens must agree), to check the script itself without a GPU.

    python benchmarks/gpu_check.py [--layers 8] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
import time
import traceback

if "--cpu-smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
from _scratch import scratch_dir

from openledger.serve.ops.lora_batched import BatchedPlan, add_lora_batched, stack_group_weights
from openledger.serve.ops.lora_reference import lora_expand_reference, lora_shrink_reference
from openledger.serve.ops.lora_torch import LoraGroups, LoraSlice, LoraWeights, add_lora

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
    from openledger.serve.ops.lora_triton import (
        bgmv_expand,
        bgmv_shrink,
        lora_segments,
        sgmv_expand,
        sgmv_shrink,
    )

    ok = True
    for dtype, (hidden, out), rank, count in itertools.product(dtypes, sizes, ranks, counts):
        a, b, r = stacks(count, rank, hidden, out, dtype, device)
        idx = torch.randint(-1, count, (tokens,), device=device).sort().values
        x = torch.randn(tokens, hidden, device=device, dtype=dtype)
        want = lora_expand_reference(lora_shrink_reference(x, a, idx), b, idx)
        seg = lora_segments(idx)
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
    from openledger.serve.ops.lora_triton import lora_segments

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
        seg, groups = lora_segments(idx), LoraGroups.from_indices(idx)
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


def engine_throughput(layers: int, device: str = "cuda", shape: dict[str, int] = LLAMA3_8B,
                      requests: int = 64, prompt: int = 128, new: int = 128,
                      adapters: int = 100) -> None:  # fmt: skip
    """Llama-3-8B-shaped engine, 100 adapters, 64 requests: LoRA vs no LoRA tokens/s."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from openledger.models import tiny_config, tiny_tokenizer
    from openledger.serve import Engine, EngineConfig, SamplingParams

    root = scratch_dir("gpu-check-")
    dtype = "bfloat16" if device == "cuda" else "float32"
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

    def make_engine(backend: str) -> Engine:
        engine = Engine(root / "base", EngineConfig(device=device, dtype=dtype,  # type: ignore[arg-type]
                                                     max_num_seqs=requests,
                                                     max_adapter_host_memory=4 * 2**30,
                                                     kv_cache_memory=8 * 2**30,
                                                     lora_backend=backend))  # fmt: skip
        for index in range(adapters):
            engine.add_adapter(f"a{index}", root / "adapter")
        return engine

    def prompts(salt: int) -> list[list[int]]:  # other prompts each pass: no cached prefixes
        return [[1 + (i * 7 + j + 997 * salt) % (config.vocab_size - 1) for j in range(prompt)]
                for i in range(requests)]  # fmt: skip

    runs = (("no LoRA", False, "triton"), (f"{adapters} adapters, Triton", True, "triton"),
            (f"{adapters} adapters, torch batched", True, "torch"))  # fmt: skip
    engine = make_engine("triton")
    for label, adapter, backend in runs:
        if engine.adapters is not None and engine.adapters.state.backend_name != backend:
            del engine
            engine = make_engine(backend)
        params = [SamplingParams(max_tokens=new, min_tokens=new,
                                 adapter=f"a{(i * 37) % adapters}" if adapter else None)
                  for i in range(requests)]  # fmt: skip
        engine.generate(prompts(0)[:4], params[:4])  # compiles the kernels
        # NOTE: the first pass loads each request's adapter just in time (disk -> host ->
        # slot) as it is admitted; the second finds them in their slots.
        for salt, when in ((1, "first pass"), (2, "second pass")):
            synchronize(device)
            start = time.perf_counter()
            engine.generate(prompts(salt), params)
            synchronize(device)
            wall = time.perf_counter() - start
            rate = requests * new / wall
            print(f"engine ({layers} Llama-3-8B layers, {requests} requests x {new} tokens) "
                  f"{label}, {when}: {rate:.0f} tokens/s ({wall:.2f} s)", flush=True)  # fmt: skip


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
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()
    if args.cpu_smoke:
        print("device: CPU under TRITON_INTERPRET=1 (smoke test of this script only)")
        tiny = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16)  # fmt: skip
        ok = part("kernels", lambda: check_kernels(
            "cpu", [torch.float32, torch.float16], [(64, 96)], [8, 16], [1, 8], 24))  # fmt: skip
        ok &= part("kernel speed", lambda: kernel_speed("cpu", 64, 96, (8, 32), repeats=1))
        ok &= part("engine", lambda: engine_throughput(
            2, "cpu", tiny, requests=4, prompt=8, new=4, adapters=3))  # fmt: skip
        ok &= part("tiny engine", smoke_engine)
        sys.exit(0 if ok else 1)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    sizes = [(576, 576), (576, 1536), (4096, 6144), (4096, 14336), (14336, 4096)]
    ok = part("kernels", lambda: check_kernels(
        "cuda", [torch.float16, torch.bfloat16], sizes, [8, 16, 64], [1, 8, 64], 256))  # fmt: skip
    ok &= part("engine", lambda: engine_throughput(args.layers))
    ok &= part("kernel speed", kernel_speed)  # NOTE: last: it captures CUDA graphs
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
