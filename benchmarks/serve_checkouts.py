"""Our engine's mixed-8 and base-only rates in two checkouts, interleaved: a refactor's cost.

    python benchmarks/serve_checkouts.py OLD_CHECKOUT [NEW_CHECKOUT] [--rounds 4] [--runs 3]

``OLD_CHECKOUT`` is a folder holding another version of this repository (e.g.
``git worktree add /tmp/old <commit>``); ``NEW_CHECKOUT`` defaults to this one. Each round
starts one process per checkout (their order alternates between rounds), which loads
SmolLM2-135M-Instruct fp32 on CPU with the 8 mixed-8 adapters of
``benchmarks/serve_adapters.py`` (made once, shared by both), warms up, then times
``--runs`` runs of 16 requests x 32 new tokens with adapters round-robin and without
adapters. Prints each process's medians, then the medians over all processes and their
ratio, with the machine and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = """
import json, statistics, sys, time
repo, adapters, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:0] = [repo + "/src", repo + "/benchmarks"]
import openledger
assert openledger.__file__.startswith(repo), openledger.__file__
from pathlib import Path
from openledger.models import resolve_model
from openledger.serve import Engine, EngineConfig, SamplingParams
from serve_throughput import prompts
folder = str(resolve_model("smollm2-135m-instruct").path)
engine = Engine(folder, EngineConfig(device="cpu", dtype="float32"))
for index, path in enumerate(sorted(Path(adapters).glob("a*"))):
    engine.add_adapter(f"a{index}", path)
texts = prompts()
mixed = [SamplingParams(max_tokens=32, min_tokens=32, adapter=f"a{i % 8}")
         for i in range(len(texts))]
base = [SamplingParams(max_tokens=32, min_tokens=32) for _ in texts]
engine.generate(texts[:8], mixed[:8])
rates = {"mixed-8": [], "base-only": []}
for _ in range(runs):
    for label, params in (("mixed-8", mixed), ("base-only", base)):
        start = time.perf_counter()
        engine.generate(texts, params)
        rates[label].append(len(texts) * 32 / (time.perf_counter() - start))
print(json.dumps({k: statistics.median(v) for k, v in rates.items()}))
"""


def one_process(repo: Path, adapters: Path, runs: int) -> dict[str, float]:
    """Rates of one fresh process over ``repo``'s code."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo), str(adapters), str(runs)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    rates: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=HERE.parent)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from _machine import describe_machine
    from _scratch import scratch_dir
    from serve_adapters import make_adapters

    from openledger.models import resolve_model

    print(describe_machine(), f"load {os.getloadavg()[0]:.1f}", flush=True)
    adapters = scratch_dir("serve-checkouts-")
    make_adapters(str(resolve_model("smollm2-135m-instruct").path), adapters)
    found: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for round_ in range(args.rounds):
        order = ("old", "new") if round_ % 2 == 0 else ("new", "old")
        for which in order:
            start = time.perf_counter()
            rates = one_process(getattr(args, which), adapters, args.runs)
            found[which].append(rates)
            shown = ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
            print(
                f"round {round_ + 1} {which}: {shown} tok/s ({time.perf_counter() - start:.0f} s)"
            )
    for label in ("mixed-8", "base-only"):
        old = statistics.median(r[label] for r in found["old"])
        new = statistics.median(r[label] for r in found["new"])
        print(f"{label}: old {old:.1f}, new {new:.1f} tok/s; new / old {new / old:.2f}x")
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
