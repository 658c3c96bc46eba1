"""The attention plan of one mixed step, built once and shared by every layer.

The engine's steps mix sequences with one new token (decode) and several (prompts or
prompt chunks). :func:`plan_attention` builds, on the host and once per step, what every
layer's attention needs besides its tensors: for the decode rows, their block tables,
context lengths, the flat cache slots of their keys and a mask; for the prompt rows,
groups of similar sizes padded to one ``[Bp, max_q] x [Bp, max_k]`` layout each (so
padding adds little to a group's work), with their gather indices and masks. A paged
decode kernel (:class:`DecodeFn`) reads the decode rows' tables and lengths instead.

The masks apply the plan's sliding window; a layer with another window (Gemma's
alternating local and global layers) uses :meth:`AttentionPlan.for_window`, the same
plan with that window's masks, built once per step and window and shared by those layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

__all__ = [
    "AttentionPlan",
    "DecodeFn",
    "DecodeGroup",
    "PrefillGroup",
    "plan_attention",
]


class DecodeFn(Protocol):
    """A paged decode attention: one new token per sequence attending over its cached
    context, its own token included (the reference is
    :func:`~openledger.serve.ops.attention_torch.decode_attention`; kernels:
    :func:`~openledger.serve.ops.attention_cpu.paged_decode_attention_cpu`,
    :func:`~openledger.serve.ops.attention_triton.paged_decode_attention`).

    Args:
        query: ``[B, heads, dim]``.
        k_cache: Key cache ``[num_blocks, block_size, kv_heads, dim]``, already holding
            this step's keys.
        v_cache: Value cache, likewise.
        block_tables: ``[B, max_blocks]`` block ids, padded with any valid id.
        context_lens: ``[B]`` tokens visible to each query (its own included), >= 1.
        scale: Softmax scale.
        sliding_window: Mistral-style window, None for full attention.

    Returns:
        ``[B, heads, dim]`` in the query's dtype.
    """

    def __call__(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        *,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """Attend (see the class docstring)."""
        ...


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
class _MaskedGroup:
    """A group's bool ``mask`` and its additive form, made once per step and dtype."""

    mask: torch.Tensor = field(kw_only=True)
    _bias: torch.Tensor | None = field(default=None, repr=False, kw_only=True)

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """:attr:`mask` as an additive 0 / -inf mask in ``dtype``, shared by every layer."""
        self._bias = _additive(self.mask, self._bias, dtype)
        return self._bias


@dataclass(slots=True)
class DecodeGroup(_MaskedGroup):
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
    seqs: list[_Seq] = field(default_factory=list, repr=False, kw_only=True)


@dataclass(slots=True)
class PrefillGroup(_MaskedGroup):
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
    seqs: list[_Seq] = field(default_factory=list, repr=False, kw_only=True)

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
        sliding_window: The window the masks apply, None for full causal attention.
    """

    num_tokens: int
    decode: DecodeGroup | None
    prefill: list[PrefillGroup]
    sliding_window: int | None = None
    _variants: dict[int | None, AttentionPlan] = field(default_factory=dict, repr=False)

    def for_window(self, window: int | None) -> AttentionPlan:
        """This plan with masks for ``window`` (None: full causal) instead of its own: the
        same groups, index tensors shared, masks built on the first call per step."""
        if window == self.sliding_window:
            return self
        if window not in self._variants:
            device = self.prefill[0].mask.device if self.prefill else None
            if self.decode is not None:
                device = self.decode.mask.device
            assert device is not None  # NOTE: a plan has decode rows or prompt groups
            decode = None
            if self.decode is not None:
                mask = _decode_mask(self.decode.seqs, window).to(device)
                decode = replace(self.decode, mask=mask, _bias=None)
            prefill = [
                replace(g, mask=_prefill_mask(g.seqs, window).to(device), _bias=None)
                for g in self.prefill
            ]
            self._variants[window] = AttentionPlan(self.num_tokens, decode, prefill, window)
        return self._variants[window]


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
    return AttentionPlan(row, decode, groups, sliding_window)


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
        mask=_decode_mask(seqs, window).to(device),
        seqs=seqs,
    )


def _decode_mask(seqs: list[_Seq], window: int | None) -> torch.Tensor:
    """``[Bd, 1, 1, span]``: the key positions each one-token sequence sees."""
    span = max(s.context_len for s in seqs)
    lens = torch.tensor([s.context_len for s in seqs])
    return _visible(lens[:, None] - 1, torch.arange(span)[None, :], window)[:, None, None, :]


def _prefill_mask(seqs: list[_Seq], window: int | None) -> torch.Tensor:
    """``[Bp, 1, max_q, max_k]``: the key positions each padded query sees."""
    max_q = max(s.num_queries for s in seqs)
    max_k = max(s.context_len for s in seqs)
    lens_q = torch.tensor([s.num_queries for s in seqs])[:, None]
    index = torch.arange(max_q)[None, :]
    real = index < lens_q  # [Bp, max_q]
    query_pos = torch.tensor([s.context_len for s in seqs])[:, None] - lens_q + index
    key_pos = torch.arange(max_k)[None, None, :]
    mask = _visible(query_pos[:, :, None], key_pos, window)
    mask |= ~real[:, :, None] & (key_pos == 0)  # NOTE: a fully masked row would give NaN
    return mask[:, None]


def _prefill_group(
    seqs: list[_Seq], block_size: int, window: int | None, device: torch.device
) -> PrefillGroup:
    max_q = max(s.num_queries for s in seqs)
    max_k = max(s.context_len for s in seqs)
    lens_q = torch.tensor([s.num_queries for s in seqs])[:, None]
    index = torch.arange(max_q)[None, :]
    real = index < lens_q  # [Bp, max_q]
    rows = torch.tensor([s.row for s in seqs])[:, None] + index
    rows = torch.where(real, rows, 0).flatten()
    out_index = real.flatten().nonzero().flatten()
    return PrefillGroup(
        query_rows=rows.to(device),
        out_index=out_index.to(device),
        out_rows=rows[out_index].to(device),
        key_slots=_key_slots(seqs, max_k, block_size).flatten().to(device),
        mask=_prefill_mask(seqs, window).to(device),
        seqs=seqs,
    )
