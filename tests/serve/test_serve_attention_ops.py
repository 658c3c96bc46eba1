"""Paged attention: reference (gather + SDPA) vs naive einsum; Triton kernel vs reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tests.numerics import (
    assert_within,
    assert_within_rounding,
    attention_bound,
    gamma,
    unit_roundoff,
)

from openledger.serve import Engine, EngineConfig, SamplingParams
from openledger.serve.ops import attention_torch as reference

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None
) -> torch.Tensor:
    """q [n, H, D] are the last n positions of k, v [L, Hkv, D]; one einsum per product."""
    n, heads, dim = q.shape
    length, kv_heads = k.shape[:2]
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * dim**-0.5
    scores = scores.masked_fill(~reference.window_mask(n, length, window, q.device), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def assert_attention_close(
    got: torch.Tensor,
    want: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Within the rounding bound of attention over ``k``'s keys (float32 on both sides)."""
    bound = attention_bound(
        q, naive_attention(q, k, v.abs(), window), float(k.abs().max()), q.shape[-1] ** -0.5
    )
    terms = q.shape[-1] + 2 * k.shape[0] + 2
    assert_within_rounding(got.float(), want, bound=bound, dtype=dtype, terms=terms)


def paged_case(
    lens: list[int],
    block_size: int,
    heads: int,
    kv_heads: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Random contexts scattered over shuffled blocks: (k_cache, v_cache, tables, ks, vs)."""
    gen = torch.Generator().manual_seed(sum(lens) + block_size + dim)
    needed = [-(-n // block_size) for n in lens]
    num_blocks = sum(needed) + 3
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    k_cache = torch.zeros(num_blocks, block_size, kv_heads, dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    tables = torch.zeros(len(lens), max(needed), dtype=torch.int32)
    ks, vs = [], []
    for row, (length, count) in enumerate(zip(lens, needed, strict=True)):
        table = [ids.pop() for _ in range(count)]
        tables[row, :count] = torch.tensor(table, dtype=torch.int32)
        k = torch.randn(length, kv_heads, dim, generator=gen).to(dtype)
        v = torch.randn(length, kv_heads, dim, generator=gen).to(dtype)
        slots = torch.tensor(
            [table[p // block_size] * block_size + p % block_size for p in range(length)]
        )
        reference.store_kv(k, v, k_cache, v_cache, slots)
        ks.append(k)
        vs.append(v)
    return k_cache, v_cache, tables, ks, vs


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 1), (6, 2)])
def test_prefill_reference_matches_naive(window: int | None, heads: int, kv_heads: int) -> None:
    lens, queries = [9, 4, 13], [9, 1, 6]  # the 2nd and 3rd have cached prefixes
    k_cache, v_cache, tables, ks, vs = paged_case(lens, 4, heads, kv_heads, 8)
    q = torch.randn(sum(queries), heads, 8)
    out = reference.prefill_attention(
        q, k_cache, v_cache, tables, queries, lens, scale=8**-0.5, sliding_window=window
    )
    start = 0
    for n, k, v in zip(queries, ks, vs, strict=True):
        expected = naive_attention(q[start : start + n], k, v, window)
        assert_attention_close(out[start : start + n], expected, q[start : start + n], k, v, window)
        start += n


@pytest.mark.parametrize("window", [None, 3])
def test_decode_reference_matches_naive(window: int | None) -> None:
    lens = [1, 7, 12, 5]
    k_cache, v_cache, tables, ks, vs = paged_case(lens, 4, 4, 2, 16)
    q = torch.randn(len(lens), 4, 16)
    context = torch.tensor(lens, dtype=torch.int32)
    out = reference.decode_attention(
        q, k_cache, v_cache, tables, context, scale=0.25, sliding_window=window
    )
    for row, (k, v) in enumerate(zip(ks, vs, strict=True)):
        want = naive_attention(q[row : row + 1], k, v, window)
        assert_attention_close(out[row : row + 1], want, q[row : row + 1], k, v, window)


@needs_triton
@pytest.mark.parametrize(
    ("block_size", "heads", "kv_heads", "dim", "window", "dtype"),
    [
        (4, 4, 2, 16, None, torch.float32),
        (2, 6, 2, 24, None, torch.float32),  # head_dim not a power of two
        (8, 4, 1, 32, 5, torch.float32),
        (1, 2, 2, 8, None, torch.float32),
        (4, 4, 4, 16, 3, torch.float16),
    ],
)
def test_triton_decode_matches_reference(
    block_size: int, heads: int, kv_heads: int, dim: int, window: int | None, dtype: torch.dtype
) -> None:
    from openledger.serve.ops.attention_triton import paged_decode_attention

    lens = [1, 9, 17]
    k_cache, v_cache, tables, _, _ = paged_case(lens, block_size, heads, kv_heads, dim, dtype)
    q = torch.randn(len(lens), heads, dim).to(dtype)
    context = torch.tensor(lens, dtype=torch.int32)
    args = (q, k_cache, v_cache, tables, context)
    got = paged_decode_attention(*args, scale=dim**-0.5, sliding_window=window)
    want = reference.decode_attention(
        *(t.float() if t.is_floating_point() else t for t in args),
        scale=dim**-0.5,
        sliding_window=window,
    )
    k_abs = float(k_cache.float().abs().max())
    abs_v = v_cache.float().abs()
    abs_out = reference.decode_attention(
        *(t.float() if t.is_floating_point() else t for t in (q, k_cache)),
        abs_v,
        tables,
        context,
        scale=dim**-0.5,
        sliding_window=window,
    )
    # float32 sums inside the kernel; in float16 also the weights' and the output's stores
    terms = dim + 2 * max(lens) + 2
    limit = 2 * gamma(terms, torch.float32) * attention_bound(q.float(), abs_out, k_abs, dim**-0.5)
    if dtype != torch.float32:
        limit = limit + 2 * unit_roundoff(dtype) * abs_out
    assert_within(got.float(), want, limit)


@needs_triton
def test_triton_backend_engine_gives_the_reference_tokens(
    tiny_checkpoints: dict[str, Path],
) -> None:
    folder = tiny_checkpoints["qwen2"]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    prompts = ["The capital", "Numbers: 0 1 2 3 4"]
    config = {"block_size": 4, "num_blocks": 32}
    want = Engine(folder, EngineConfig(**config, attention_backend="reference")).generate(
        prompts, params
    )
    got = Engine(folder, EngineConfig(**config, attention_backend="triton")).generate(
        prompts, params
    )
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
