"""Peak memory of starting an engine: a full-precision base against a quantised one.

Each configuration starts an :class:`~openledger.serve.Engine` (SmolLM2-135M-Instruct by
default, CPU, float32 activations) in a fresh process and reports that process's peak
anonymous memory while it starts (``RssAnon``, sampled every 2 ms: the heap, without the
checkpoint's memory-mapped pages, which the kernel can drop), the anonymous memory once
the engine is ready, and the peak resident memory with the mapped pages (``ru_maxrss``);
the float32 engine is the baseline of the same run. Imports and the Python runtime count
in every figure alike (the ``imports only`` row gives their share).

    python benchmarks/serve_load_memory.py [--model NAME] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from _machine import describe_machine  # benchmarks/ is the script folder

_CHILD = """
import json, resource, sys, threading, time
import torch
from openledger.serve import Engine, EngineConfig

def anonymous():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))

peak_anon, done = [anonymous()], threading.Event()

def sample():
    while not done.wait(0.002):
        peak_anon.append(max(peak_anon[-1], anonymous()))

sampler = threading.Thread(target=sample)
sampler.start()
model, quantization = sys.argv[1], sys.argv[2]
started = time.perf_counter()
if quantization != "imports":
    engine = Engine(model, EngineConfig(
        device="cpu", dtype="float32", num_blocks=64,
        quantization=None if quantization == "none" else quantization,
    ))
seconds = time.perf_counter() - started
done.set()
sampler.join()
print(json.dumps({
    "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "peak_anon_kib": max(peak_anon[-1], anonymous()),
    "anon_kib": anonymous(),
    "seconds": seconds,
}))
"""

CONFIGS = (("imports only", "imports"), ("float32", "none"), ("int8", "int8"), ("fp8", "fp8"))


def run(model: str, quantization: str) -> dict[str, float]:
    """Start one engine in a fresh process; its peak and final resident memory."""
    found = subprocess.run(
        [sys.executable, "-c", _CHILD, model, quantization],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(found.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Print each configuration's median peak and final memory against float32."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}; model {args.model}; {args.repeats} processes each")
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in CONFIGS}
    for _ in range(args.repeats):
        for name, quantization in CONFIGS:  # NOTE: interleaved, so drift hits all alike
            rows[name].append(run(args.model, quantization))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    base = median("float32", "peak_anon_kib")
    for name, _ in CONFIGS:
        anon, peak = median(name, "peak_anon_kib") / 1024, median(name, "peak_kib") / 1024
        print(
            f"{name:13s} peak anonymous {anon:6.0f} MiB ({anon * 1024 / base:.2f}x float32's), "
            f"when ready {median(name, 'anon_kib') / 1024:6.0f} MiB; peak resident with "
            f"the checkpoint's mapped pages {peak:6.0f} MiB; start "
            f"{median(name, 'seconds'):.1f} s"
        )


if __name__ == "__main__":
    main()
