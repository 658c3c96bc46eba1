"""The compiled CPU kernels (LoRA updates, paged decode attention, the MLP activation, the
greedy argmax) against the einsum, SDPA and torch references; their build cache, the fallback
when they cannot be built, bad inputs. (RMSNorm and rotary: tests/serve/test_serve_linear.)"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from tests.conftest import missing_reference

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tests.numerics import (  # noqa: E402
    assert_within,
    assert_within_rounding,
    attention_bound,
    gamma,
)
from tests.serve.test_serve_lora_ops import (  # noqa: E402
    delta_bound,
    max_rank_of,
    random_weights,
    reference_delta,
)

from openledger.serve.layers.lora import LoraState  # noqa: E402
from openledger.serve.ops import cpu_kernels as cpu_kernels_module  # noqa: E402
from openledger.serve.ops.attention_cpu import (  # noqa: E402
    cpu_decode_attention,
    paged_decode_attention_cpu,
)
from openledger.serve.ops.attention_torch import decode_attention  # noqa: E402
from openledger.serve.ops.cpu_kernels import (  # noqa: E402
    CpuKernels,
    c_compiler,
    compile_cpu_kernels,
    cpu_float32,
    cpu_kernels,
)
from openledger.serve.ops.lora_cpu import (  # noqa: E402
    CpuLoraKernel,
    KernelEntry,
    LoraCpuTable,
    LoraRows,
    cpu_lora_kernel,
    kernel_layout,
)
from openledger.serve.ops.lora_torch import LoraWeights, combine_lora_weights  # noqa: E402
from openledger.serve.ops.rowwise_cpu import argmax_rows, silu_mul  # noqa: E402

HIDDEN = 40
SIZES = [40, 8, 8]  # a q|k|v-like fused projection
OUT = sum(SIZES)


@pytest.fixture(scope="module")
def kernel() -> CpuLoraKernel:
    if c_compiler() is None:
        missing_reference("no C compiler on this machine")
    built = cpu_lora_kernel()
    assert built is not None, "a C compiler is here but the kernel did not build"
    return built


def make_weights(gen: torch.Generator, count: int, max_rank: int) -> list[LoraWeights | None]:
    weights: list[LoraWeights | None] = []
    for index in range(count):
        ranks = [
            None if (index + i) % 4 == 3 else 1 + (index * 7 + i * 3) % max_rank for i in range(3)
        ]
        ranks[0] = ranks[0] or max_rank  # every adapter targets at least one slice
        weights.append(kernel_layout(random_weights(gen, HIDDEN, SIZES, ranks)))
    return weights


def run(
    kernel: CpuLoraKernel,
    weights: list[LoraWeights | None],
    token_groups: list[int],
    gen: torch.Generator,
) -> None:
    """The kernel's result for tokens whose group is ``token_groups[t]`` (-1: no adapter),
    groups numbered in order of ``weights``, within rounding of the reference's."""
    tokens = len(token_groups)
    x = torch.randn(tokens, HIDDEN, generator=gen)
    base = torch.randn(tokens, OUT, generator=gen)
    runs = [[(t, t + 1) for t, g in enumerate(token_groups) if g == group]
            for group in range(len(weights))]  # fmt: skip
    present = [group for group, r in enumerate(runs) if r]
    rows = LoraRows.from_runs([runs[g] for g in present])
    table = LoraCpuTable.from_weights([weights[g] for g in present], HIDDEN, OUT)
    got = base.clone()
    kernel.apply(got, x, rows, table)
    indices = torch.tensor(token_groups, dtype=torch.int64)
    live = torch.tensor([g >= 0 and weights[g] is not None for g in token_groups])
    masked = torch.where(live, indices, torch.full_like(indices, -1))
    want = base + reference_delta(x, weights, masked, OUT)
    assert_lora_close(got, want, x, weights, masked, base)


def assert_lora_close(
    got: torch.Tensor,
    want: torch.Tensor,
    x: torch.Tensor,
    weights: list[LoraWeights | None],
    indices: torch.Tensor,
    base: torch.Tensor | float = 0.0,
) -> None:
    """Within the float32 rounding bound of the shrink, the expand and the add."""
    terms = x.shape[1] + max_rank_of(weights) + 1
    bound = delta_bound(x, weights, indices, got.shape[1], base)
    assert_within_rounding(got, want, bound=bound, dtype=torch.float32, terms=terms)


@settings(max_examples=60, deadline=None)
@given(
    token_groups=st.lists(st.integers(-1, 5), min_size=1, max_size=70),
    max_rank=st.sampled_from([1, 8, 16, 64]),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_reference(
    kernel: CpuLoraKernel, token_groups: list[int], max_rank: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    weights = make_weights(gen, 6, max_rank)
    weights[4] = None  # an adapter that does not target this projection
    run(kernel, weights, token_groups, gen)


@pytest.mark.parametrize("rows_per_group", [1, 2, 3, 4, 5, 17, 32, 130])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_decode_and_prefill_layouts_on_any_thread_count(
    kernel: CpuLoraKernel, rows_per_group: int, threads: int
) -> None:
    gen = torch.Generator().manual_seed(rows_per_group * 10 + threads)
    weights = make_weights(gen, 3, 16)
    token_groups = [g for g in range(3) for _ in range(rows_per_group)] + [-1]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run(kernel, weights, token_groups, gen)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("hidden", [7, 45, 77])
@pytest.mark.parametrize("rows_per_group", [1, 2, 3])
def test_decode_vector_tails_on_odd_widths(
    kernel: CpuLoraKernel, hidden: int, rows_per_group: int
) -> None:
    # the shrink sums 32, then 8 floats at a time, the expand 32 columns at a time: widths
    # that are no multiple of either leave tails in both phases
    gen = torch.Generator().manual_seed(hidden * 10 + rows_per_group)
    sizes = [37, 70, 5]
    weights: list[LoraWeights | None] = [
        kernel_layout(random_weights(gen, hidden, sizes, [3, None, 16])),
        kernel_layout(random_weights(gen, hidden, sizes, [None, 16, 1])),
    ]
    groups = [g for g in range(2) for _ in range(rows_per_group)] + [-1]
    tokens, out = len(groups), sum(sizes)
    x, base = torch.randn(tokens, hidden, generator=gen), torch.randn(tokens, out, generator=gen)
    rows = LoraRows.from_runs([[(t, t + 1) for t, g in enumerate(groups) if g == group]
                               for group in range(2)])  # fmt: skip
    got = base.clone()
    kernel.apply(got, x, rows, LoraCpuTable.from_weights(weights, hidden, out))
    want = base + reference_delta(x, weights, torch.tensor(groups), out)
    assert_lora_close(got, want, x, weights, torch.tensor(groups), base)


def test_more_groups_than_one_pass(kernel: CpuLoraKernel) -> None:
    gen = torch.Generator().manual_seed(3)
    weights = make_weights(gen, 300, 4)  # the kernel takes 256 groups per pass
    token_groups = [g for g in range(300) for _ in range(1 + g % 2)]
    run(kernel, weights, token_groups, gen)


def test_weighted_combination_is_exact(kernel: CpuLoraKernel) -> None:
    gen = torch.Generator().manual_seed(5)
    first, second = make_weights(gen, 2, 8)
    assert first is not None
    assert second is not None
    mix = kernel_layout(combine_lora_weights([(first, 0.7), (second, 0.3)]))
    x = torch.randn(4, HIDDEN, generator=gen)
    got = torch.zeros(4, OUT)
    kernel.apply(
        got, x, LoraRows.from_runs([[(0, 4)]]), LoraCpuTable.from_weights([mix], HIDDEN, OUT)
    )
    want = torch.zeros(4, OUT)
    indices = torch.zeros(4, dtype=torch.int64)
    for weights, coefficient in ((first, 0.7), (second, 0.3)):
        want += coefficient * reference_delta(x, [weights], indices, OUT)
    # the mix's B carries its coefficient (one more rounding); the reference sums two updates
    assert_lora_close(got, want, x, [mix], indices, delta_bound(x, [mix], indices, OUT))


def test_strided_rows_of_a_wider_tensor(kernel: CpuLoraKernel) -> None:
    gen = torch.Generator().manual_seed(9)
    weights = make_weights(gen, 1, 8)
    wide_x = torch.randn(3, HIDDEN + 5, generator=gen)
    wide_out = torch.zeros(3, OUT + 7)
    x, out = wide_x[:, :HIDDEN], wide_out[:, 2 : 2 + OUT]
    kernel.apply(
        out, x, LoraRows.from_runs([[(0, 3)]]), LoraCpuTable.from_weights(weights, HIDDEN, OUT)
    )
    indices = torch.zeros(3, dtype=torch.int64)
    want = reference_delta(x.contiguous(), weights, indices, OUT)
    assert_lora_close(out, want, x, weights, indices)
    assert not wide_out[:, :2].any()
    assert not wide_out[:, 2 + OUT :].any()


def test_kernel_layout_keeps_values_and_views() -> None:
    gen = torch.Generator().manual_seed(1)
    plain = random_weights(gen, HIDDEN, SIZES, [4, None, 2])
    laid = kernel_layout(plain)
    for before, after in zip(plain.slices, laid.slices, strict=True):
        assert torch.equal(before.b, after.b)
        assert after.b.shape == before.b.shape
        assert after.b.T.is_contiguous()
    assert torch.equal(plain.a, laid.a)
    again = kernel_layout(laid)
    assert all(x.b is y.b for x, y in zip(laid.slices, again.slices, strict=True))  # no copy


def test_rows_from_runs() -> None:
    rows = LoraRows.from_runs([[(0, 2), (5, 6)], [(2, 5)]])
    assert rows.row_offsets.tolist() == [0, 3, 6]
    assert rows.rows.tolist() == [0, 1, 5, 2, 3, 4]
    assert (rows.max_rows, rows.row_end, rows.num_groups) == (3, 6, 2)
    with pytest.raises(ValueError, match=r"row run \(3, 3\)"):
        LoraRows.from_runs([[(3, 3)]])
    with pytest.raises(ValueError, match="more than one run"):
        LoraRows.from_runs([[(0, 2)], [(1, 3)]])


def test_bad_inputs_are_refused_before_the_kernel_runs(kernel: CpuLoraKernel) -> None:
    gen = torch.Generator().manual_seed(2)
    weights = make_weights(gen, 2, 8)
    table = LoraCpuTable.from_weights(weights, HIDDEN, OUT)
    rows = LoraRows.from_runs([[(0, 1)], [(1, 2)]])
    x, out = torch.randn(2, HIDDEN), torch.zeros(2, OUT)
    with pytest.raises(ValueError, match=r"x: .*float32"):
        kernel.apply(out, x.double(), rows, table)
    with pytest.raises(ValueError, match=r"out: .*unit stride"):
        kernel.apply(out.T.contiguous().T, x, rows, table)
    with pytest.raises(ValueError, match="after A"):
        kernel.apply(out, torch.randn(2, HIDDEN + 1), rows, table)
    with pytest.raises(ValueError, match="one of the step's 1 tokens"):
        kernel.apply(out[:1], x[:1], rows, table)
    with pytest.raises(ValueError, match="1 row groups for a table of 2"):
        kernel.apply(out, x, LoraRows.from_runs([[(0, 2)]]), table)
    assert not out.any()  # nothing was written by a refused call
    first = weights[0]
    assert first is not None
    with pytest.raises(ValueError, match="float32"):
        KernelEntry.of(LoraWeights(first.a.bfloat16(), first.slices), HIDDEN, OUT)
    with pytest.raises(ValueError, match="does not fit rank"):
        KernelEntry.of(first, HIDDEN, 10)
    with pytest.raises(ValueError, match=r"\[rank, 41\]"):
        KernelEntry.of(first, HIDDEN + 1, OUT)


def test_build_is_cached_per_source_flags_and_cpu(tmp_path: Path) -> None:
    if c_compiler() is None:
        missing_reference("no C compiler on this machine")
    path = compile_cpu_kernels(tmp_path)
    assert path is not None
    assert path.parent == tmp_path
    assert path.name.startswith("cpu_kernels-")
    stamp = path.stat().st_mtime_ns
    assert compile_cpu_kernels(tmp_path) == path
    assert path.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no scratch left behind
    CpuKernels(path)  # loads, has every kernel


def test_without_a_compiler_the_torch_paths_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "missing-cc"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang either
    with caplog.at_level(logging.WARNING, logger=cpu_kernels_module.__name__):
        assert compile_cpu_kernels(tmp_path) is None
    assert "no C compiler" in caplog.text
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: cannot compile' >&2\nexit 1\n")
    broken.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger=cpu_kernels_module.__name__):
        assert compile_cpu_kernels(tmp_path) is None
    assert "cannot compile" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cc"]  # no half-built library


def test_switched_off_states_keep_the_fused_layout() -> None:
    gen = torch.Generator().manual_seed(4)
    off = LoraState(["proj"], 2, torch.device("cpu"), cpu_kernel=False)
    assert off.backend_name == "torch"
    off.install(0, {"proj": random_weights(gen, HIDDEN, SIZES, [2, 3, None])})
    installed = off.slots["proj"][0]
    assert installed is not None
    assert len(installed.slices) == 1
    if c_compiler() is not None:
        state = LoraState(["proj"], 2, torch.device("cpu"))
        assert state.backend_name == "cpu"  # "auto" takes the kernel where it is built
        state.install(0, {"proj": random_weights(gen, HIDDEN, SIZES, [2, 3, None])})
        installed = state.slots["proj"][0]
        assert installed is not None
        assert len(installed.slices) == 2
        assert installed.slices[0].b.T.is_contiguous()


def test_an_engine_without_cpu_kernels_runs_torch_paths_to_the_same_tokens(
    kernel: CpuLoraKernel, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openledger.serve import Engine, EngineConfig, SamplingParams
    from openledger.serve.layers.linear import Linear
    from openledger.serve.layers.norm import RMSNorm

    calls: list[str] = []
    library = cpu_kernels()
    assert library is not None
    for name in ("linear", "add_rms_norm", "rotary", "silu_mul", "argmax_rows", "paged_decode"):
        original = getattr(library, name)
        monkeypatch.setattr(
            library, name, lambda *a, _n=name, _f=original: calls.append(_n) or _f(*a)
        )
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    config = EngineConfig(num_blocks=64, block_size=4, max_num_seqs=4)
    tokens = {}
    for kernels in (True, False):
        calls.clear()
        engine = Engine(tiny_llama_dir, config.model_copy(update={"cpu_kernels": kernels}))
        tokens[kernels] = [o.token_ids for o in engine.generate([[5, 9, 33], [7, 1]], params)]
        assert bool(calls) == kernels, sorted(set(calls))
        model = engine.runner.model
        assert all(m.use_cpu_kernels == kernels for m in model.modules() if isinstance(m, RMSNorm))
        assert all(m.packed.use_kernel == kernels for m in model.modules() if isinstance(m, Linear))
    assert tokens[True] == tokens[False]
    from openledger.exceptions import ConfigError

    chosen = Engine(tiny_llama_dir, config.model_copy(update={"lora_backend": "cpu"}))
    assert chosen.adapters is not None
    assert chosen.adapters.state.backend_name == "cpu"
    plain = Engine(tiny_llama_dir, config.model_copy(update={"lora_backend": "torch"}))
    assert plain.adapters is not None
    assert plain.adapters.state.backend_name == "torch"
    off = config.model_copy(update={"lora_backend": "cpu", "cpu_kernels": False})
    with pytest.raises(ConfigError, match="lora_backend='cpu' needs the compiled CPU kernel"):
        Engine(tiny_llama_dir, off)


def cache_and_tables(
    gen: torch.Generator, lens: list[int], kv_heads: int, dim: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random caches and shuffled block tables (padded with a valid id) for ``lens``."""
    need = [-(-n // block_size) for n in lens]
    width = max(need)
    num_blocks = sum(need) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables, at = [], 0
    for count in need:
        tables.append(order[at : at + count] + [order[-1]] * (width - count))
        at += count
    shape = (num_blocks, block_size, kv_heads, dim)
    return (
        torch.randn(shape, generator=gen),
        torch.randn(shape, generator=gen),
        torch.tensor(tables, dtype=torch.int32),
        torch.tensor(lens, dtype=torch.int32),
    )


@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 128), (8, 2, 32), (6, 1, 48)]
)
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("window", [None, 5])
def test_decode_attention_matches_reference(
    kernel: CpuLoraKernel, heads: int, kv_heads: int, dim: int, block_size: int, window: int | None
) -> None:
    gen = torch.Generator().manual_seed(heads * 1000 + dim + block_size)
    lens = [1, 7, 16, 33, 2]
    k_cache, v_cache, tables, context = cache_and_tables(gen, lens, kv_heads, dim, block_size)
    fused = torch.randn(len(lens), heads + kv_heads, dim, generator=gen)
    query = fused[:, :heads]  # NOTE: a view with a row stride, as the model passes it
    args = (query, k_cache, v_cache, tables, context)
    got = paged_decode_attention_cpu(*args, scale=dim**-0.5, sliding_window=window)
    want = decode_attention(*args, scale=dim**-0.5, sliding_window=window)
    abs_out = decode_attention(
        query, k_cache, v_cache.abs(), tables, context, scale=dim**-0.5, sliding_window=window
    )
    bound = attention_bound(query, abs_out, float(k_cache.abs().max()), dim**-0.5)
    terms = dim + 2 * max(lens) + 2
    assert_within_rounding(got, want, bound=bound, dtype=torch.float32, terms=terms)


def test_decode_attention_bad_inputs(kernel: CpuLoraKernel) -> None:
    gen = torch.Generator().manual_seed(0)
    k_cache, v_cache, tables, lens = cache_and_tables(gen, [3, 9], 2, 16, 4)
    query = torch.randn(2, 4, 16, generator=gen)
    call = paged_decode_attention_cpu
    with pytest.raises(ValueError, match="query: float32 CPU expected"):
        call(query.double(), k_cache, v_cache, tables, lens, scale=0.25)
    with pytest.raises(ValueError, match="must be contiguous"):
        call(query, k_cache.transpose(0, 1), v_cache, tables, lens, scale=0.25)
    with pytest.raises(ValueError, match="does not fit caches"):
        call(torch.randn(2, 3, 16), k_cache, v_cache, tables, lens, scale=0.25)
    with pytest.raises(ValueError, match=r"context lengths must be in 1\.\.12"):
        call(query, k_cache, v_cache, tables, torch.tensor([3, 13], dtype=torch.int32), scale=0.25)
    with pytest.raises(ValueError, match=r"context lengths"):
        call(query, k_cache, v_cache, tables, torch.tensor([0, 3], dtype=torch.int32), scale=0.25)
    bad = tables.clone()
    bad[1, 0] = k_cache.shape[0]
    with pytest.raises(ValueError, match="block ids must be in"):
        call(query, k_cache, v_cache, bad, lens, scale=0.25)
    with pytest.raises(ValueError, match="do not fit 2 queries"):
        call(query, k_cache, v_cache, tables[:1], lens, scale=0.25)
    empty = call(query[:0], k_cache, v_cache, tables[:0], lens[:0], scale=0.25)
    assert empty.shape == (0, 4, 16)
    assert cpu_decode_attention(query) is paged_decode_attention_cpu
    assert cpu_decode_attention(query.double()) is None


@pytest.mark.parametrize("rows", [1, 16, 100])
def test_silu_mul_matches_torch(kernel: CpuLoraKernel, rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    wide = torch.randn(rows, 2 * 48 + 5, generator=gen) * 4  # rows of a wider tensor
    wide[0, :8] = torch.tensor([-100.0, -88.5, -87.0, 0.0, 87.5, 88.5, 100.0, float("nan")])
    gate_up = wide[:, : 2 * 48]
    out = silu_mul(gate_up)
    gate, up = gate_up[:, :48], gate_up[:, 48:]
    want = torch.nn.functional.silu(gate) * up
    assert torch.equal(out.isnan(), want.isnan())
    # the kernel's exp is within 1.5 ulp (3 roundings), then an add, a division and a
    # product, against torch's own; results below exp(-87) (subnormal) may be flushed to 0
    limit = 2 * gamma(8, torch.float32) * want.abs() + (gate * up).abs() * math.exp(-87.0)
    finite = ~want.isnan()
    assert_within(out[finite], want[finite], limit[finite])


def test_argmax_rows_follows_torch_ties_nan_and_infinities(kernel: CpuLoraKernel) -> None:
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(7, 1000 + 3, generator=gen)
    x = wide[:, :1000]  # strided rows
    x[1, :] = 2.0  # all equal: the first
    x[2, 10] = x[2, 900] = 50.0  # a tie: the first
    x[3, 500] = float("nan")
    x[3, 40] = float("nan")  # NaN wins, the first NaN
    x[4, 999] = float("inf")  # the last element
    x[5, :] = float("-inf")  # nothing but -inf: index 0
    assert argmax_rows(x) == x.argmax(dim=-1).tolist()
    assert argmax_rows(x.double()) == x.double().argmax(dim=-1).tolist()  # torch path
    assert argmax_rows(x[:0]) == []


def test_cpu_float32_names_what_the_kernels_read(kernel: CpuLoraKernel) -> None:
    rows = torch.zeros(3, 4)
    assert cpu_float32(rows, rows[:, :2], torch.zeros(5))
    assert not cpu_float32(rows, rows.double())
    assert not cpu_float32(rows.T)  # the last dimension is strided
