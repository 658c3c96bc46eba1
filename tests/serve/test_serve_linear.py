"""Served layers: fused projections (slices, packed weights, the adapter hook), norm, rotary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import missing_reference
from tests.numerics import abs_products, assert_within_rounding

from openledger.serve.layers.linear import KERNEL_MAX_ROWS, Linear, PackedWeight
from openledger.serve.layers.norm import RMSNorm, _fits_kernel
from openledger.serve.layers.rotary import RotaryEmbedding
from openledger.serve.models.config import RopeConfig
from openledger.serve.ops.cpu_kernels import cpu_kernels

needs_kernels = pytest.mark.usefixtures("_kernels_built")


@pytest.fixture
def _kernels_built() -> None:
    if cpu_kernels() is None:
        missing_reference("no C compiler for the kernels")


def test_slices_load_into_one_fused_matmul() -> None:
    q, k = torch.randn(4, 3), torch.randn(2, 3)
    fused = Linear(3, (4, 2), bias=True)
    fused.load_slice("weight", q, 0)
    fused.load_slice("weight", k, 1)
    fused.load_slice("bias", torch.ones(2), 1)
    x = torch.randn(5, 3)
    out_q, out_k = fused(x).split(fused.output_sizes, dim=-1)
    assert_within_rounding(out_q, x @ q.T, bound=abs_products(x, q), dtype=x.dtype, terms=3)
    size = abs_products(x, k) + 1
    assert_within_rounding(out_k, x @ k.T + 1, bound=size, dtype=x.dtype, terms=4)
    with pytest.raises(ValueError, match="slice 0"):
        fused.load_slice("weight", torch.randn(3, 3), 0)


def test_output_hook_sees_input_and_updates_output() -> None:
    class AddRowSum:
        def apply(self, out: torch.Tensor, x: torch.Tensor) -> None:
            out += x.sum(dim=-1, keepdim=True)

    linear = Linear(3, (2,))
    linear.load_slice("weight", torch.zeros(2, 3))
    linear.lora = AddRowSum()
    x = torch.arange(6.0).view(2, 3)
    torch.testing.assert_close(linear(x), torch.tensor([[3.0, 3.0], [12.0, 12.0]]))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 16, 200])
def test_packed_projection_matches_the_plain_matmul(bias: bool, rows: int) -> None:
    linear = Linear(96, (64, 32), bias=bias)
    linear.load_slice("weight", torch.randn(64, 96), 0)
    linear.load_slice("weight", torch.randn(32, 96), 1)
    if bias:
        linear.load_slice("bias", torch.randn(32), 1)
    x = torch.randn(rows, 96)
    size = abs_products(x, linear.weight) + (linear.bias.abs() if bias else 0)
    want = F.linear(x, linear.weight, linear.bias)
    assert_within_rounding(linear(x), want, bound=size, dtype=x.dtype, terms=97)


def test_packed_copy_follows_reloaded_weights_and_can_be_switched_off() -> None:
    linear = Linear(8, (4,))
    linear.load_slice("weight", torch.ones(4, 8))
    x = torch.randn(3, 8)
    size = x.abs().sum(-1, keepdim=True).expand(3, 4)
    want = x.sum(-1, keepdim=True).expand(3, 4)
    assert_within_rounding(linear(x), want, bound=size, dtype=x.dtype, terms=8)
    linear.load_slice("weight", torch.zeros(4, 8))  # written through .data: repacked
    assert torch.count_nonzero(linear(x)) == 0
    with torch.no_grad():
        linear.weight.fill_(2.0)  # an in-place write bumps the version: repacked
    assert_within_rounding(linear(x), 2 * want, bound=2 * size, dtype=x.dtype, terms=8)
    linear.packed.configure(packing=False, use_kernel=True)  # EngineConfig.weight_packing
    assert torch.equal(linear(x), F.linear(x, linear.weight))


@needs_kernels
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, KERNEL_MAX_ROWS),
    outputs=st.integers(1, 80),
    inputs=st.integers(1, 300),
    bias=st.booleans(),
    offset=st.integers(0, 5),
    threads=st.integers(1, 3),
)
def test_compiled_projection_is_the_matmul_for_any_shape(
    rows: int, outputs: int, inputs: int, bias: bool, offset: int, threads: int
) -> None:
    # panels of 24 outputs (a padded last one), depth in passes of 128, 4-row blocks, runs
    # of 32 rows: every remainder is drawn; x is a view into wider rows, as the model's are
    weight = torch.randn(outputs, inputs)
    b = torch.randn(outputs) if bias else None
    x = torch.randn(rows, inputs + offset)[:, offset:]  # NOTE: row stride != inputs
    packed = PackedWeight()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = packed.linear(x, weight, b)
    finally:
        torch.set_num_threads(before)
    assert packed._kind == "kernel"
    x64, w64 = x.double(), weight.double()
    b64 = None if b is None else b.double()
    want = F.linear(x64, w64, b64)
    # float32 rounding of a sum of `inputs` products and the bias (float64 reference)
    size = abs_products(x, weight) + (0 if b64 is None else b64.abs())
    assert_within_rounding(
        got, want, bound=size, dtype=torch.float32, terms=inputs + 1, both_rounded=False
    )


@needs_kernels
def test_compiled_projection_is_deterministic_and_leaves_autograd_to_torch() -> None:
    weight, x = torch.randn(100, 200), torch.randn(KERNEL_MAX_ROWS, 200)
    packed = PackedWeight()
    first = packed.linear(x, weight, None)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(packed.linear(x, weight, None), first)  # one summation order
    finally:
        torch.set_num_threads(before)
    assert torch.equal(packed.linear(x[:5], weight, None), first[:5])  # rows independent
    wide = torch.randn(KERNEL_MAX_ROWS + 1, 200)  # past the kernel's rows: the default GEMM
    assert torch.equal(packed.linear(wide, weight, None), F.linear(wide, weight))
    leaf = x[:3].clone().requires_grad_(True)
    packed.linear(leaf, weight, None).sum().backward()  # recorded: through F.linear
    assert leaf.grad is not None
    size = weight.abs().sum(0).expand(3, 200)  # the gradient sums the weight's 100 rows
    want = weight.sum(0).expand(3, 200)
    assert_within_rounding(leaf.grad, want, bound=size, dtype=torch.float32, terms=100)


def test_packed_projection_refuses_mismatched_shapes_like_the_matmul() -> None:
    weight, packed = torch.randn(30, 20), PackedWeight()
    packed.linear(torch.randn(4, 20), weight, None)  # packed now
    with pytest.raises(RuntimeError, match=r"cannot be multiplied|shape"):
        packed.linear(torch.randn(4, 21), weight, None)  # never read past x's rows
    with pytest.raises(RuntimeError, match=r"size|shape"):
        packed.linear(torch.randn(4, 20), weight, torch.randn(29))
    assert packed.linear(torch.randn(4, 20), weight, None).shape == (4, 30)  # still serves


def test_packed_weight_leaves_other_dtypes_and_shapes_to_the_plain_matmul() -> None:
    weight = torch.randn(6, 5, dtype=torch.float64)
    x = torch.randn(2, 5, dtype=torch.float64)
    assert torch.equal(PackedWeight().linear(x, weight, None), F.linear(x, weight))
    weight32, x3d = torch.randn(6, 5), torch.randn(2, 3, 5)
    assert torch.equal(PackedWeight().linear(x3d, weight32, None), F.linear(x3d, weight32))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    width=st.sampled_from([1, 7, 64, 576, 1536]),
    eps=st.sampled_from([1e-5, 1e-6]),
    scale=st.floats(1e-3, 1e3),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_rms_norm_is_bit_for_bit_transformers_llama_norm(
    rows: int, width: int, eps: float, scale: float, dtype: torch.dtype
) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ours, theirs = RMSNorm(width, eps), LlamaRMSNorm(width, eps)
    weight = torch.randn(width)
    ours.weight.data.copy_(weight)
    theirs.weight.data.copy_(weight)
    x = (torch.randn(rows, width) * scale).to(dtype)
    with torch.no_grad():
        want = theirs(x)
        assert torch.equal(ours._torch(x), want)  # the torch path, on every device
        got = ours(x)  # the compiled kernel where it applies (float32 CPU)
    if dtype == torch.float32 and _fits_kernel(x, ours.weight):
        # the sum of squares over the width (positive terms: a relative bound), the root,
        # the eps add and three products: each element within gamma of its own size
        assert_within_rounding(got, want, bound=want.abs(), dtype=dtype, terms=width + 6)
    else:
        assert torch.equal(got, want)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 130), width=st.sampled_from([1, 7, 576, 1536]))
def test_add_norm_is_the_residual_add_then_the_norm(rows: int, width: int) -> None:
    norm = RMSNorm(width, 1e-5)
    norm.weight.data.normal_()
    hidden, delta = torch.randn(rows, width), torch.randn(rows, width)
    want_hidden = hidden + delta
    want = norm._torch(want_hidden)
    got = norm.add_norm(hidden, delta)
    assert torch.equal(hidden, want_hidden)  # the add is exact in either path
    assert_within_rounding(got, want, bound=want.abs(), dtype=torch.float32, terms=width + 6)
    again = hidden.clone()
    got = norm.add_norm(again, None)
    assert_within_rounding(got, want, bound=want.abs(), dtype=torch.float32, terms=width + 6)
    assert torch.equal(again, hidden)  # no residual: nothing added
    before = hidden.clone()
    with pytest.raises((ValueError, RuntimeError), match=r"does not match|must match"):
        norm.add_norm(hidden, torch.randn(rows, width + 1))
    assert torch.equal(hidden, before)  # a refused residual changes nothing


@pytest.mark.parametrize("rope", [RopeConfig(), RopeConfig(theta=500000.0)])
def test_rotary_over_query_and_key_heads_is_the_rotate_half_formula(rope: RopeConfig) -> None:
    dim, heads = 64, 12
    rotary = RotaryEmbedding(dim, 256, rope)
    positions = torch.tensor([0, 5, 17, 255, 3])
    x = torch.randn(5, heads, dim)
    cos, sin = rotary.cos_sin[:, positions][:, :, None, :]
    rotate_half = torch.cat((-x[..., dim // 2 :], x[..., : dim // 2]), dim=-1)
    want = x * cos + rotate_half * sin
    assert torch.equal(rotary._torch(positions, x), want)  # the torch path, bit for bit
    # the compiled kernel (float32 CPU) may fuse a multiply-add: two products and a sum
    size = (x * cos).abs() + (rotate_half * sin).abs()
    assert_within_rounding(rotary(positions, x), want, bound=size, dtype=x.dtype, terms=3)
    other = torch.tensor([1, 1, 1, 1, 1])  # a new step's positions: looked up again
    cos, sin = rotary.cos_sin[:, other][:, :, None, :]
    want = x * cos + rotate_half * sin
    assert torch.equal(rotary._torch(other, x), want)
    size = (x * cos).abs() + (rotate_half * sin).abs()
    assert_within_rounding(rotary(other, x), want, bound=size, dtype=x.dtype, terms=3)
    fused = torch.randn(5, heads + 3, dim)[:, :heads]  # a view of a wider row, as the model has
    cos, sin = rotary.cos_sin[:, positions][:, :, None, :]
    rotate_fused = torch.cat((-fused[..., dim // 2 :], fused[..., : dim // 2]), dim=-1)
    size = (fused * cos).abs() + (rotate_fused * sin).abs()
    got, want = rotary(positions, fused), rotary._torch(positions, fused)
    assert_within_rounding(got, want, bound=size, dtype=fused.dtype, terms=3)
    with pytest.raises((ValueError, IndexError), match=r"positions must be in 0\.\.255|index"):
        rotary(torch.tensor([0, 1, 2, 3, 256]), x)  # past the table: refused, never read
    assert rotary(positions, x.double()).dtype == torch.float64  # other dtypes: torch ops
