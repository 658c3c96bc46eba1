"""CPU projections at decode sizes: the compiled panel kernel against oneDNN and the default GEMM.

Shapes of SmolLM2-135M (q|k|v 576 -> 960, o 576 -> 576, gate|up 576 -> 3072, down 1536 ->
576, LM head 576 -> 49152), fp32, token rows from one (a lone decode) to a prompt's
worth. Each shape has as many distinct weights as the model has layers (the head: one),
taken in turn, so weights come from memory as they do in a forward pass rather than from
cache. Measured in the same run, per call:

* ``default``: ``F.linear`` over the row-major weight (torch's GEMM);
* ``oneDNN``: oneDNN's kernel over the weight pre-packed in its blocked layout (what
  ``PackedWeight`` used for every row count before);
* ``ours``: ``openledger_linear`` over the weight packed in 24-column panels
  (``PackedWeight`` now, up to ``KERNEL_MAX_ROWS`` rows).

Prints microseconds per call, the ratios ours / oneDNN and ours / default, and the sum
over one decode step of the model (30 layers' projections and the head).

With ``--int8``, also the int8 weight-only kernels over the same weights quantised
(``EngineConfig.quantization="int8"``; :class:`~openledger.serve.layers.quant.
QuantizedWeight`): float32 arithmetic (``openledger::linear_int8``) and, where the CPU has
AVX512-BF16, bfloat16 dot products (``quantized_compute="bfloat16"``), each checked
against the dequantised weight and given as a ratio to our float32 kernel's time.

    python benchmarks/cpu_linear.py [--rows 1,4,16,32,64,128,256] [--threads N] [--int8]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _machine import describe_machine

from openledger.serve.layers.linear import KERNEL_MAX_ROWS, PackedWeight
from openledger.serve.layers.quant import QuantizedWeight
from openledger.serve.ops import linear_cpu
from openledger.serve.ops.cpu_kernels import cpu_kernels

SHAPES = {  # name: (in, out, weights per step)
    "q|k|v": (576, 960, 30),
    "o": (576, 576, 30),
    "gate|up": (576, 3072, 30),
    "down": (1536, 576, 30),
    "head": (576, 49152, 1),
}


def per_call(fn: Callable[[int], object], count: int, calls: int) -> float:
    """Median over 3 passes of the microseconds per call of ``fn(i % count)``."""
    for i in range(count):  # NOTE: packs every weight and warms the code paths
        fn(i)
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(calls):
            fn(i % count)
        passes.append((time.perf_counter() - start) / calls * 1e6)
    return sorted(passes)[1]


def time_rows(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    onednn: list[torch.Tensor],
    packed: list[PackedWeight],
    calls: int,
) -> tuple[float, float, float]:
    """Microseconds per call of the default GEMM, oneDNN and ours, after checking ours."""
    count = len(weights)
    with torch.inference_mode():
        got = packed[0].linear(x, weights[0], None)
        torch.testing.assert_close(got, F.linear(x, weights[0]), rtol=1e-4, atol=1e-3)
        default = per_call(lambda i: F.linear(x, weights[i]), count, calls)
        dnn = per_call(
            lambda i: torch.ops.mkldnn._linear_pointwise(x, onednn[i], None, "none", [], ""),
            count,
            calls,
        )
        ours = per_call(lambda i: packed[i].linear(x, weights[i], None), count, calls)
    return default, dnn, ours


def time_int8(x: torch.Tensor, quantized: list[QuantizedWeight], calls: int) -> float:
    """Microseconds per call of an int8 kernel, after checking it against the dequantised
    weight in float64: within float32 rounding of the sum of |products| (k * 2^-24 each),
    plus, with bfloat16 dot products, the inputs' rounding to bfloat16 (2^-9 each)."""
    with torch.inference_mode():
        q = quantized[0]
        w = q.dequantize(torch.float64)
        want = F.linear(x.double(), w)
        sizes = F.linear(x.double().abs(), w.abs())
        unit = x.shape[1] * 2.0**-24 + (2.0**-9 if q.uses_bf16_dot else 0.0)
        error = (q.linear(x, None).double() - want).abs()
        if not bool((error <= 2 * unit * sizes + 1e-30).all()):
            raise AssertionError(f"{q}: off by up to {float((error / sizes).max()):.2e}")
        return per_call(lambda i: quantized[i].linear(x, None), len(quantized), calls)


def main() -> None:
    """Time every shape and row count; print the table and the per-step sums."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16,32,64,128,256")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--int8", action="store_true", help="also the int8 weight kernels")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if cpu_kernels() is None:
        raise SystemExit("the compiled CPU kernels are not available here (no C compiler?)")
    rows_list = [int(r) for r in args.rows.split(",")]
    print(
        describe_machine(f"{torch.get_num_threads()} torch threads", f"torch {torch.__version__}")
    )
    computes = ["float32"] + (["bfloat16"] if linear_cpu.has_bf16_dot() else [])
    int8_names = [f"int8 {c}" for c in computes] if args.int8 else []
    print(f"{'shape':8s} {'rows':>5s} {'default':>10s} {'oneDNN':>10s} {'ours':>10s}  "
          "ours/oneDNN  ours/default"
          + "".join(f"  {n:>14s} (/ours)" for n in int8_names))  # fmt: skip
    step: dict[int, list[float]] = {rows: [0.0] * (3 + len(int8_names)) for rows in rows_list}
    torch.manual_seed(0)
    for name, (inputs, outputs, count) in SHAPES.items():
        weights = [torch.randn(outputs, inputs) for _ in range(count)]
        onednn = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
        packed = [PackedWeight() for _ in weights]
        quantized = (
            [[QuantizedWeight(w, "int8", compute=c) for w in weights] for c in computes]  # type: ignore[arg-type]
            if args.int8
            else []
        )
        for rows in rows_list:
            x = torch.randn(rows, inputs)
            calls = max(20, min(300, 6000 // rows)) if count > 1 else max(5, 400 // rows)
            default, dnn, ours = time_rows(x, weights, onednn, packed, calls)
            int8 = [time_int8(x, q, calls) for q in quantized]
            marker = "" if rows <= KERNEL_MAX_ROWS else "  (ours = default GEMM above the limit)"
            print(f"{name:8s} {rows:5d} {default:10.1f} {dnn:10.1f} {ours:10.1f}  "
                  f"{ours / dnn:11.2f}x {ours / default:12.2f}x"
                  + "".join(f"  {t:14.1f} ({t / ours:.2f}x)" for t in int8)
                  + marker, flush=True)  # fmt: skip
            for i, value in enumerate((default, dnn, ours, *int8)):
                step[rows][i] += value * count
    print("one decode step of SmolLM2-135M (30 layers' projections + head), ms:")
    for rows, (default, dnn, ours, *int8) in step.items():
        print(f"  {rows:4d} rows: default {default / 1e3:7.2f}, oneDNN {dnn / 1e3:7.2f}, "
              f"ours {ours / 1e3:7.2f}  (ours/oneDNN {ours / dnn:.2f}x)"
              + "".join(f"; {n} {t / 1e3:7.2f} ({t / ours:.2f}x ours)"
                        for n, t in zip(int8_names, int8, strict=True)))  # fmt: skip


if __name__ == "__main__":
    main()
