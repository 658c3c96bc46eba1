"""Attention of one mixed step: decode rows and prompt rows, batched, in plain torch.

:func:`step_attention` runs, over a step's :class:`~.attention_plan.AttentionPlan`, one
batched SDPA for the decode rows (or a paged decode kernel, :class:`~.attention_plan.DecodeFn`)
and one per group of similar prompt rows, over a padded layout::

    decode rows   q [Bd, heads, 1, dim]     keys gathered [Bd, span]    mask [Bd, 1, 1, span]
    prompt group  q [Bp, heads, max_q, dim] keys gathered [Bp, max_k]   mask [Bp, 1, max_q, max_k]

The per-sequence functions of :mod:`openledger.serve.ops.attention_torch` are the
references these are tested against. The plan's names are re-exported here.

With logit soft-capping (Gemma 2: ``scores = cap * tanh(scores / cap)`` before the mask),
SDPA does not apply: the scores are computed, capped, masked and softmaxed (in float32)
in plain ops in transformers' order, and no decode kernel is used.
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
    softcap: float | None = None,
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
            the keys and runs SDPA. Ignored with ``softcap``.
        softcap: Attention logit soft-capping, None for none.

    Returns:
        ``[T, heads, dim]``.
    """
    group = plan.decode
    if softcap is not None:
        decode = None
    if group is not None and group.rows is None and not plan.prefill:
        return _decode_rows(query, k_cache, v_cache, group, scale, sliding_window, decode, softcap)
    out = torch.empty_like(query)
    if group is not None:
        rows = query if group.rows is None else query.index_select(0, group.rows)
        done = _decode_rows(rows, k_cache, v_cache, group, scale, sliding_window, decode, softcap)
        if group.rows is None:
            out.copy_(done)
        else:
            out.index_copy_(0, group.rows, done)
    for prefill in plan.prefill:
        done = _prefill_rows(query, k_cache, v_cache, prefill, scale, softcap)
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
    softcap: float | None,
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
    out = _attend(query[:, :, None, :], k, v, group.additive_mask(query.dtype), scale, softcap)
    return out[:, :, 0, :]


def _prefill_rows(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    group: PrefillGroup,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    batch, max_q, _ = group.shape
    heads, dim = query.shape[1:]
    q = query.index_select(0, group.query_rows).view(batch, max_q, heads, dim).transpose(1, 2)
    k = _gathered(k_cache, group.key_slots, batch)
    v = _gathered(v_cache, group.key_slots, batch)
    out = _attend(q, k, v, group.additive_mask(q.dtype), scale, softcap)
    return out.transpose(1, 2).reshape(batch * max_q, heads, dim).index_select(0, group.out_index)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:
    """``q [B, heads, Q, dim]`` over ``k``/``v [B, kv_heads, K, dim]`` with an additive
    ``mask``: SDPA, or with ``softcap`` the capped scores in transformers' eager order."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    scores = torch.tanh(scores / softcap) * softcap + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)
