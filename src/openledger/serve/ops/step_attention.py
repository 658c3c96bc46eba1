"""Attention of one mixed step: decode rows and prompt rows, batched, in plain torch.

:func:`step_attention` runs, over a step's :class:`~.attention_plan.AttentionPlan`, one
batched SDPA for the decode rows (or a paged decode kernel, :class:`~.attention_plan.DecodeFn`)
and one per group of similar prompt rows, over a padded layout::

    decode rows   q [Bd, heads, 1, dim]     keys gathered [Bd, span]    mask [Bd, 1, 1, span]
    prompt group  q [Bp, heads, max_q, dim] keys gathered [Bp, max_k]   mask [Bp, 1, max_q, max_k]

The per-sequence functions of :mod:`openledger.serve.ops.attention_torch` are the
references these are tested against. The plan's names are re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from openledger.serve.ops.attention_plan import (
    AttentionPlan,
    DecodeFn,
    DecodeGroup,
    PrefillGroup,
    plan_attention,
)

__all__ = [
    "AttentionPlan",
    "DecodeFn",
    "DecodeGroup",
    "PrefillGroup",
    "plan_attention",
    "step_attention",
]


def step_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: AttentionPlan,
    *,
    scale: float,
    sliding_window: int | None = None,
    decode: DecodeFn | None = None,
) -> torch.Tensor:
    """Attention of a step's tokens over the cache (already holding this step's keys).

    Args:
        query: ``[T, heads, dim]``.
        k_cache: Key cache ``[num_blocks, block_size, kv_heads, dim]``.
        v_cache: Value cache, likewise.
        plan: The step's :func:`plan_attention`.
        scale: Softmax scale.
        sliding_window: Passed to ``decode``; the plan's masks already apply it.
        decode: A paged decode kernel for the one-token rows (e.g. Triton); None gathers
            the keys and runs SDPA.

    Returns:
        ``[T, heads, dim]``.
    """
    group = plan.decode
    if group is not None and group.rows is None and not plan.prefill:
        return _decode_rows(query, k_cache, v_cache, group, scale, sliding_window, decode)
    out = torch.empty_like(query)
    if group is not None:
        rows = query if group.rows is None else query.index_select(0, group.rows)
        done = _decode_rows(rows, k_cache, v_cache, group, scale, sliding_window, decode)
        if group.rows is None:
            out.copy_(done)
        else:
            out.index_copy_(0, group.rows, done)
    for prefill in plan.prefill:
        done = _prefill_rows(query, k_cache, v_cache, prefill, scale)
        out.index_copy_(0, prefill.out_rows, done)
    return out


def _gathered(cache: torch.Tensor, slots: torch.Tensor, batch: int) -> torch.Tensor:
    """``[batch, kv_heads, width, dim]`` keys or values at flat ``slots [batch * width]``."""
    kv_heads, dim = cache.shape[-2:]
    flat = cache.view(-1, kv_heads, dim).index_select(0, slots)
    return flat.view(batch, -1, kv_heads, dim).transpose(1, 2)


def _decode_rows(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    group: DecodeGroup,
    scale: float,
    sliding_window: int | None,
    decode: DecodeFn | None,
) -> torch.Tensor:
    if decode is not None:
        return decode(
            query,
            k_cache,
            v_cache,
            group.block_tables,
            group.context_lens,
            scale=scale,
            sliding_window=sliding_window,
        )
    batch = query.shape[0]
    k = _gathered(k_cache, group.key_slots, batch)
    v = _gathered(v_cache, group.key_slots, batch)
    out = F.scaled_dot_product_attention(
        query[:, :, None, :],
        k,
        v,
        attn_mask=group.additive_mask(query.dtype),
        scale=scale,
        enable_gqa=True,
    )
    return out[:, :, 0, :]


def _prefill_rows(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    group: PrefillGroup,
    scale: float,
) -> torch.Tensor:
    batch, max_q, _ = group.shape
    heads, dim = query.shape[1:]
    q = query.index_select(0, group.query_rows).view(batch, max_q, heads, dim).transpose(1, 2)
    k = _gathered(k_cache, group.key_slots, batch)
    v = _gathered(v_cache, group.key_slots, batch)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=group.additive_mask(q.dtype), scale=scale, enable_gqa=True
    )
    return out.transpose(1, 2).reshape(batch * max_q, heads, dim).index_select(0, group.out_index)
