"""Paged attention in plain torch (the torch backend): gather the blocks, then SDPA.

They run on any device: the engine writes the cache with :func:`store_kv` and falls back to
them where no compiled or Triton kernel applies, and the tests hold the fast paths
(:mod:`.attention_cpu`, :mod:`.attention_triton`) to their results. Cache layout, per
layer::

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    flat slot s = block_id * block_size + offset   ->   cache.view(-1, kv_heads, dim)[s]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "decode_attention",
    "gather_kv",
    "prefill_attention",
    "store_kv",
    "window_mask",
]


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``key``/``value`` ``[T, kv_heads, dim]`` into the cache slots ``slot_mapping``."""
    kv_heads, dim = k_cache.shape[-2:]
    k_cache.view(-1, kv_heads, dim).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, kv_heads, dim).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` cached entries of one sequence: ``[length, kv_heads, dim]``."""
    return cache[block_table].flatten(0, 1)[:length]


def window_mask(
    num_queries: int, context_len: int, sliding_window: int | None, device: torch.device
) -> torch.Tensor:
    """Boolean ``[num_queries, context_len]`` mask: the queries are the last positions.

    Query ``i`` sits at position ``context_len - num_queries + i`` and sees key ``j`` when
    ``j <= position`` and, with a sliding window, ``position - j < sliding_window``.
    """
    position = torch.arange(num_queries, device=device)[:, None] + (context_len - num_queries)
    key = torch.arange(context_len, device=device)[None, :]
    visible = key <= position
    if sliding_window is not None:
        visible &= position - key < sliding_window
    return visible


def prefill_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_lens: list[int],
    context_lens: list[int],
    *,
    scale: float,
    sliding_window: int | None = None,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its cached context.

    Args:
        query: ``[T, heads, dim]``, the new tokens of all sequences back to back.
        k_cache: Key cache, already holding this step's keys.
        v_cache: Value cache, likewise.
        block_tables: ``[B, max_blocks]`` block ids.
        query_lens: New tokens per sequence (sums to T).
        context_lens: Cached plus new tokens per sequence.
        scale: Softmax scale, usually ``dim ** -0.5``.
        sliding_window: Mistral-style window, None for full attention.
        key: This step's keys ``[T, kv_heads, dim]`` (as stored); when given, a sequence
            with nothing cached attends over them directly instead of gathering blocks.
        value: This step's values, likewise.

    Returns:
        ``[T, heads, dim]``.
    """
    outputs = []
    start = 0
    for index, (num_queries, context_len) in enumerate(zip(query_lens, context_lens, strict=False)):
        q = query[start : start + num_queries].transpose(0, 1)
        if key is not None and value is not None and num_queries == context_len:
            k = key[start : start + num_queries].to(k_cache.dtype).transpose(0, 1)
            v = value[start : start + num_queries].to(v_cache.dtype).transpose(0, 1)
        else:
            k = gather_kv(k_cache, block_tables[index], context_len).transpose(0, 1)
            v = gather_kv(v_cache, block_tables[index], context_len).transpose(0, 1)
        if num_queries == context_len and sliding_window is None:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=True
            )
        else:
            mask = window_mask(num_queries, context_len, sliding_window, query.device)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=scale, enable_gqa=True
            )
        outputs.append(out.transpose(0, 1))
        start += num_queries
    return torch.cat(outputs)


def decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """One new token per sequence attending over its whole cached context: the reference
    :class:`~openledger.serve.ops.attention_plan.DecodeFn` (arguments and result there),
    every table's blocks gathered and one masked SDPA, on any device and dtype."""
    batch, max_blocks = block_tables.shape
    span = max_blocks * k_cache.shape[1]
    k = k_cache[block_tables].view(batch, span, *k_cache.shape[2:]).transpose(1, 2)
    v = v_cache[block_tables].view(batch, span, *v_cache.shape[2:]).transpose(1, 2)
    key_pos = torch.arange(span, device=query.device)[None, :]
    lens = context_lens.to(torch.int64)[:, None]
    visible = key_pos < lens
    if sliding_window is not None:
        visible &= (lens - 1) - key_pos < sliding_window
    out = F.scaled_dot_product_attention(
        query[:, :, None, :],
        k,
        v,
        attn_mask=visible[:, None, None, :],
        scale=scale,
        enable_gqa=True,
    )
    return out[:, :, 0, :]
