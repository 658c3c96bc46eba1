"""Every Triton kernel compiles for an NVIDIA Hopper GPU (sm_90), here, without a GPU.

The interpreter (``TRITON_INTERPRET=1``) that the other kernel tests use runs a kernel as
Python and never meets Triton's compiler, so what only the compiler refuses (a global
read from a kernel, a ``tl.dot`` shape or dtype it cannot lower, a constexpr branch) would
first fail on a GPU. This builds each kernel to a cubin with the compiler and ``ptxas``
that ship in the triton wheel, for every dtype and block shape its wrapper launches it
with, in a child process (the interpreter setting is read once, when triton is imported).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import itertools
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from openledger.serve.ops import lora_triton as lora
    from openledger.serve.ops import lora_triton_kernels as kernels
    from openledger.serve.ops import attention_triton as attention

    TARGET = GPUTarget("cuda", 90, 32)
    built = 0

    def build(kernel, types, constants):
        global built
        names = kernel.arg_names
        signature = {name: types.get(name, "i32") for name in names}
        signature.update({name: "constexpr" for name in constants})
        constexprs = {(names.index(name),): value for name, value in constants.items()}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=TARGET)
        assert compiled.asm["cubin"], kernel
        built += 1

    ints = {name: "*i32" for name in ("starts_ptr", "lengths_ptr", "slots_ptr", "ranks_ptr")}
    for dtype, rank in itertools.product(("fp16", "bf16", "fp32"), (8, 64)):
        ieee, block_r = dtype == "fp32", lora._block_r(rank)
        weights = {"x_ptr": f"*{dtype}", "a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}",
                   "out_ptr": f"*{dtype}", "y_ptr": "*fp32", **ints}
        build(kernels.sgmv_shrink_kernel, weights, dict(BLOCK_M=lora._BLOCK_M, BLOCK_R=block_r,
              BLOCK_K=lora._BLOCK_K, IEEE=ieee))
        build(kernels.sgmv_expand_kernel, weights, dict(BLOCK_M=lora._BLOCK_M,
              BLOCK_N=lora._BLOCK_N, BLOCK_R=block_r, IEEE=ieee))
        for index in ("*i32", "*i64"):
            gathered = {**weights, "indices_ptr": index}
            build(kernels.bgmv_shrink_kernel, gathered, dict(BLOCK_R=block_r,
                  BLOCK_K=lora._BLOCK_K))
            build(kernels.bgmv_expand_kernel, gathered, dict(BLOCK_N=lora._BLOCK_N,
                  BLOCK_R=block_r))
    for dtype, (group, dim) in itertools.product(("fp16", "bf16", "fp32"), ((3, 64), (4, 128))):
        cache = {name: f"*{dtype}" for name in ("out_ptr", "q_ptr", "k_cache_ptr",
                 "v_cache_ptr")}
        types = {**cache, "block_tables_ptr": "*i32", "context_lens_ptr": "*i32",
                 "scale": "fp32"}
        build(attention._paged_decode_kernel, types, dict(GROUP=group, BLOCK_SIZE=16,
              HEAD_DIM=dim, BLOCK_D=triton.next_power_of_2(dim)))
    print("built", built)
    """
)


def test_every_triton_kernel_compiles_for_sm90() -> None:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:  # pragma: no cover - a triton build without the NVIDIA backend
        pytest.skip("this triton has no NVIDIA backend to compile with")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_CACHE_DIR", os.path.join(os.environ["OPENLEDGER_HOME"], "triton"))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split()[-2:] == ["built", str(3 * 2 * 6 + 3 * 2)]
