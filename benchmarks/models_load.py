"""How long it takes to get a ready base model: our converted cache vs loading the GGUF.

Baseline (same run): transformers loading the packaged GGUF directly (dequantising every
tensor), which is what every process would pay without the cache.

Prints: one-time conversion, first load in a fresh process (imports excluded and
included), warm repeat loads, and the GGUF baseline, as medians with the ratio.

    python benchmarks/models_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _machine import describe_machine  # benchmarks/ is the script folder
from _scratch import scratch_dir

ALIAS = "smollm2-135m-instruct"

_FRESH = """
import time
t0 = time.perf_counter()
import torch, transformers
from openledger.models import load_base_model
t1 = time.perf_counter()
load_base_model({alias!r}, device="cpu")
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""

_GGUF = """
import time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from openledger.models import ALIASES
gguf = ALIASES[{alias!r}].require_gguf()
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)  # warm the imports
t = time.perf_counter()
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
print(time.perf_counter() - t)
"""


def _python(code: str, env: dict[str, str]) -> list[float]:
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return [float(x) for x in result.stdout.split()]


def _machine() -> str:
    return describe_machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "OPENLEDGER_HOME": str(scratch_dir("ol-bench-"))}
    env["TRANSFORMERS_VERBOSITY"] = "error"
    print(f"machine: {_machine()}")

    started = time.perf_counter()
    _python(
        f"from openledger.models import ensure_converted, ALIASES\n"
        f"ensure_converted(ALIASES[{ALIAS!r}])",
        env,
    )
    print(
        f"one-time conversion (GGUF -> safetensors + manifest): "
        f"{time.perf_counter() - started:.1f} s"
    )

    fresh = [_python(_FRESH.format(alias=ALIAS), env) for _ in range(args.repeats)]
    imports = statistics.median(f[0] for f in fresh)
    first = statistics.median(f[1] for f in fresh)
    gguf = statistics.median(
        _python(_GGUF.format(alias=ALIAS), env)[0] for _ in range(args.repeats)
    )
    warm_code = _FRESH.format(alias=ALIAS) + (
        "ts = []\nfor _ in range(5):\n    t = time.perf_counter()\n"
        f"    load_base_model({ALIAS!r}, device='cpu')\n    ts.append(time.perf_counter() - t)\n"
        "print(sorted(ts)[2])\n"
    )
    warm = _python(warm_code, env)[2]
    print(f"import torch + transformers + openledger.models: {imports:.2f} s (median)")
    print(
        f"load_base_model, first call in a fresh process (cache verified by sha256): {first:.2f} s"
    )
    print(f"load_base_model, repeat call in the same process: {warm:.2f} s")
    print(f"baseline, transformers loading the GGUF (imports warm): {gguf:.2f} s")
    print(f"ratio GGUF / first load: {gguf / first:.1f}x; GGUF / repeat load: {gguf / warm:.1f}x")


if __name__ == "__main__":
    main()
