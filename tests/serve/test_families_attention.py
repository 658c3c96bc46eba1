"""The attention pieces the Gemma families add: one step plan serving layers with different
sliding windows (``AttentionPlan.for_window``), and soft-capped attention logits."""

from __future__ import annotations

import pytest
import torch
from tests.numerics import assert_within, attention_bound, gamma
from tests.serve.test_serve_attention_ops import paged_case
from tests.serve.test_serve_mixed_steps import MIXED_SHAPES

from openledger.serve.ops import attention_torch as reference
from openledger.serve.ops.step_attention import plan_attention, step_attention


def _plan(shapes: list[tuple[int, int]], tables: torch.Tensor, window: int | None):  # type: ignore[no-untyped-def]
    return plan_attention(
        [n for n, _ in shapes],
        [c for _, c in shapes],
        [row.tolist() for row in tables],
        block_size=4,
        sliding_window=window,
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("shapes", MIXED_SHAPES)
@pytest.mark.parametrize(("built", "wanted"), [(None, 3), (6, None), (6, 2)])
def test_for_window_gives_the_masks_of_a_plan_built_with_that_window(
    shapes: list[tuple[int, int]], built: int | None, wanted: int | None
) -> None:
    _, _, tables, _, _ = paged_case([c for _, c in shapes], 4, 2, 1, 8)
    plan = _plan(shapes, tables, built)
    variant = plan.for_window(wanted)
    direct = _plan(shapes, tables, wanted)
    assert plan.for_window(built) is plan
    assert plan.for_window(wanted) is variant  # built once per step and window
    assert variant.sliding_window == wanted
    pairs = list(zip(variant.prefill, direct.prefill, strict=True))
    if plan.decode is not None:
        assert variant.decode is not None
        assert direct.decode is not None
        pairs.append((variant.decode, direct.decode))  # type: ignore[arg-type]
        assert variant.decode.key_slots is plan.decode.key_slots  # index tensors shared
    for got, want in pairs:
        assert torch.equal(got.mask, want.mask)
        assert torch.equal(got.key_slots, want.key_slots)
    if built != wanted and any(c > min(w for w in (built, wanted) if w) for _, c in shapes):
        groups = [plan.decode, *plan.prefill] if plan.decode else plan.prefill
        others = [variant.decode, *variant.prefill] if variant.decode else variant.prefill
        assert any(not torch.equal(a.mask, b.mask) for a, b in zip(groups, others, strict=True))


def _naive_capped(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    scale: float,
    cap: float,
) -> torch.Tensor:
    """float64 einsum attention with ``cap * tanh(scores / cap)`` before the mask."""
    n, heads, _ = q.shape
    length, kv_heads = k.shape[:2]
    q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    scores = torch.tanh(scores / cap) * cap
    scores = scores.masked_fill(~reference.window_mask(n, length, window, q.device), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


@pytest.mark.parametrize("shapes", MIXED_SHAPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "window", "cap"), [(4, 2, None, 2.0), (4, 1, 5, 0.5)]
)
def test_soft_capped_step_attention_matches_the_reference(
    shapes: list[tuple[int, int]], heads: int, kv_heads: int, window: int | None, cap: float
) -> None:
    dim, scale = 8, 0.3
    k_cache, v_cache, tables, ks, vs = paged_case([c for _, c in shapes], 4, heads, kv_heads, dim)
    gen = torch.Generator().manual_seed(len(shapes))
    queries = [torch.randn(n, heads, dim, generator=gen) for n, _ in shapes]
    plan = _plan(shapes, tables, window)
    got = step_attention(torch.cat(queries), k_cache, v_cache, plan, scale=scale, softcap=cap)
    want = torch.cat(
        [
            _naive_capped(q, k, v, window, scale, cap)
            for q, k, v in zip(queries, ks, vs, strict=True)
        ]
    )
    sizes = torch.cat(
        [
            attention_bound(
                q, _naive_capped(q, k, v.abs(), window, scale, cap), float(k.abs().max()), scale
            )
            for q, k, v in zip(queries, ks, vs, strict=True)
        ]
    )
    # the score sum, tanh and its two scalings, then the softmax and weighted sum
    terms = dim + 4 + 2 * max(c for _, c in shapes) + 2
    assert_within(got, want, gamma(terms, torch.float32) * sizes)
    uncapped = step_attention(torch.cat(queries), k_cache, v_cache, plan, scale=scale)
    assert not torch.allclose(uncapped, got, atol=1e-3)  # the cap changes the result
