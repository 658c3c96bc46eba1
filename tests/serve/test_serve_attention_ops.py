"""Paged attention: reference (gather + SDPA) vs naive einsum; Triton kernel vs reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from openledger.serve import Engine, EngineConfig, SamplingParams
from openledger.serve.ops import reference

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
        torch.testing.assert_close(out[start : start + n], expected, atol=1e-5, rtol=1e-5)
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
        torch.testing.assert_close(
            out[row : row + 1],
            naive_attention(q[row : row + 1], k, v, window),
            atol=1e-5,
            rtol=1e-5,
        )


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
    from openledger.serve.ops.triton_attention import paged_decode_attention

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
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=tolerance)


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
