"""Attention of one mixed step: decode rows and prompt rows, batched, in plain torch.

The engine's steps mix sequences with one new token (decode) and several (prompts or
prompt chunks). :func:`plan_attention` builds, once per step, the gather indices and masks
every layer shares; :func:`step_attention` then runs one batched SDPA for the decode rows
and one per group of similar prompt rows, over a padded layout::

    decode rows   q [Bd, heads, 1, dim]     keys gathered [Bd, span]    mask [Bd, 1, 1, span]
    prompt group  q [Bp, heads, max_q, dim] keys gathered [Bp, max_k]   mask [Bp, 1, max_q, max_k]

Prompt sequences are grouped so that padding adds little to a group's attention work. The
per-sequence functions of :mod:`openledger.serve.ops.attention_torch` are the references these
are tested against; a paged decode kernel (Triton) can take the decode rows instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "AttentionPlan",
    "DecodeFn",
    "DecodeGroup",
    "PrefillGroup",
    "plan_attention",
    "step_attention",
]

DecodeFn = Callable[..., torch.Tensor]
"""A paged decode kernel with :func:`~openledger.serve.ops.attention_torch.decode_attention`'s
signature."""

# A prompt group's padded area (queries x keys) may exceed its real area by this factor
# plus this many units: small prompts always share one call, long ones pad only a little.
_MAX_PADDING = 1.25
_PADDING_SLACK = 4096


def _additive(mask: torch.Tensor, cached: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` as 0 / -inf in ``dtype``: what SDPA makes of a bool mask, made once per step."""
    if cached is not None and cached.dtype == dtype:
        return cached
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf")
    )


@dataclass(slots=True)
class DecodeGroup:
    """The step's one-token sequences, attended in one batched call.

    Attributes:
        rows: ``[Bd]`` their token rows in the step, None when they are all rows in order.
        block_tables: ``[Bd, max_blocks]`` int32 (for a paged kernel).
        context_lens: ``[Bd]`` int32 (for a paged kernel).
        key_slots: ``[Bd * span]`` flat cache slot of each key position (padding: slot 0).
        mask: ``[Bd, 1, 1, span]`` bool, which key positions each query sees.
    """

    rows: torch.Tensor | None
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    key_slots: torch.Tensor
    mask: torch.Tensor
    _bias: torch.Tensor | None = field(default=None, repr=False)

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """:attr:`mask` as an additive 0 / -inf mask in ``dtype``, shared by every layer."""
        self._bias = _additive(self.mask, self._bias, dtype)
        return self._bias


@dataclass(slots=True)
class PrefillGroup:
    """Sequences with several new tokens, padded to one ``[Bp, max_q] x [Bp, max_k]`` SDPA.

    Attributes:
        query_rows: ``[Bp * max_q]`` token row of each padded query (padding: row 0).
        out_index: ``[N]`` positions of the real queries in the padded layout.
        out_rows: ``[N]`` their token rows in the step.
        key_slots: ``[Bp * max_k]`` flat cache slot of each key position (padding: slot 0).
        mask: ``[Bp, 1, max_q, max_k]`` bool; a padding query sees key 0 only.
    """

    query_rows: torch.Tensor
    out_index: torch.Tensor
    out_rows: torch.Tensor
    key_slots: torch.Tensor
    mask: torch.Tensor
    _bias: torch.Tensor | None = field(default=None, repr=False)

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """:attr:`mask` as an additive 0 / -inf mask in ``dtype``, shared by every layer."""
        self._bias = _additive(self.mask, self._bias, dtype)
        return self._bias

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Bp, max_q, max_k)``."""
        batch, _, max_q, max_k = self.mask.shape
        return batch, max_q, max_k


@dataclass(slots=True)
class AttentionPlan:
    """Everything a step's attention needs besides the tensors, shared by every layer.

    Attributes:
        num_tokens: ``T``, rows of the step.
        decode: The one-token sequences, None if there are none.
        prefill: Groups of the multi-token sequences.
    """

    num_tokens: int
    decode: DecodeGroup | None
    prefill: list[PrefillGroup]


@dataclass(slots=True)
class _Seq:
    row: int  # first token row in the step
    num_queries: int
    context_len: int
    block_table: list[int]


def plan_attention(
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    *,
    block_size: int,
    sliding_window: int | None,
    device: torch.device,
) -> AttentionPlan:
    """Index tensors and masks of one step (built on the host, moved once).

    Args:
        query_lens: New tokens per sequence; the step's rows are them back to back.
        context_lens: Tokens visible to each sequence after this step's writes.
        block_tables: Block ids of each sequence.
        block_size: Token slots per block.
        sliding_window: Mistral-style window, None for full attention.
        device: Where the model runs.

    Returns:
        The plan.
    """
    seqs, row = [], 0
    for num_queries, context_len, table in zip(query_lens, context_lens, block_tables, strict=True):
        seqs.append(_Seq(row, num_queries, context_len, table))
        row += num_queries
    ones = [s for s in seqs if s.num_queries == 1]
    decode = _decode_group(ones, row, block_size, sliding_window, device) if ones else None
    many = sorted((s for s in seqs if s.num_queries > 1), key=_area, reverse=True)
    groups = [_prefill_group(g, block_size, sliding_window, device) for g in _bucket(many)]
    return AttentionPlan(row, decode, groups)


def _area(seq: _Seq) -> int:
    return seq.num_queries * seq.context_len


def _bucket(seqs: list[_Seq]) -> list[list[_Seq]]:
    """Split sequences (sorted by area, largest first) into groups worth padding together."""
    groups: list[list[_Seq]] = []
    for seq in seqs:
        group = groups[-1] if groups else None
        if group is not None:
            max_q = max(s.num_queries for s in group)
            max_k = max(s.context_len for s in group)
            padded = (len(group) + 1) * max_q * max_k
            if padded <= _MAX_PADDING * (sum(map(_area, group)) + _area(seq)) + _PADDING_SLACK:
                group.append(seq)
                continue
        groups.append([seq])
    return groups


def _key_slots(seqs: list[_Seq], width: int, block_size: int) -> torch.Tensor:
    """``[B, width]`` flat cache slot of key positions ``0..width-1`` of each sequence."""
    num_blocks = max(len(s.block_table) for s in seqs)
    tables = torch.tensor([s.block_table + [0] * (num_blocks - len(s.block_table)) for s in seqs])
    position = torch.arange(width)
    block = tables[:, (position // block_size).clamp(max=num_blocks - 1)]
    return block * block_size + position % block_size


def _visible(
    query_pos: torch.Tensor, key_pos: torch.Tensor, sliding_window: int | None
) -> torch.Tensor:
    visible = key_pos <= query_pos
    if sliding_window is not None:
        visible &= query_pos - key_pos < sliding_window
    return visible


def _decode_group(
    seqs: list[_Seq], num_rows: int, block_size: int, window: int | None, device: torch.device
) -> DecodeGroup:
    span = max(s.context_len for s in seqs)
    lens = torch.tensor([s.context_len for s in seqs])
    mask = _visible(lens[:, None] - 1, torch.arange(span)[None, :], window)
    rows = [s.row for s in seqs]
    tables = [s.block_table for s in seqs]
    width = max(map(len, tables))
    return DecodeGroup(
        rows=None if rows == list(range(num_rows)) else torch.tensor(rows).to(device),
        block_tables=torch.tensor(
            [t + [0] * (width - len(t)) for t in tables], dtype=torch.int32
        ).to(device),
        context_lens=lens.to(torch.int32).to(device),
        key_slots=_key_slots(seqs, span, block_size).flatten().to(device),
        mask=mask[:, None, None, :].to(device),
    )


def _prefill_group(
    seqs: list[_Seq], block_size: int, window: int | None, device: torch.device
) -> PrefillGroup:
    max_q = max(s.num_queries for s in seqs)
    max_k = max(s.context_len for s in seqs)
    lens_q = torch.tensor([s.num_queries for s in seqs])[:, None]
    index = torch.arange(max_q)[None, :]
    real = index < lens_q  # [Bp, max_q]
    query_pos = torch.tensor([s.context_len for s in seqs])[:, None] - lens_q + index
    key_pos = torch.arange(max_k)[None, None, :]
    mask = _visible(query_pos[:, :, None], key_pos, window)
    mask |= ~real[:, :, None] & (key_pos == 0)  # NOTE: a fully masked row would give NaN
    rows = torch.tensor([s.row for s in seqs])[:, None] + index
    rows = torch.where(real, rows, 0).flatten()
    out_index = real.flatten().nonzero().flatten()
    return PrefillGroup(
        query_rows=rows.to(device),
        out_index=out_index.to(device),
        out_rows=rows[out_index].to(device),
        key_slots=_key_slots(seqs, max_k, block_size).flatten().to(device),
        mask=mask[:, None].to(device),
    )


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
