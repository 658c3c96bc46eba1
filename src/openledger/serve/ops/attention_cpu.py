"""Paged decode attention on CPU: ``openledger::paged_decode`` (``csrc/attention.c``).

Plain torch attends a decode step's rows by gathering every sequence's keys and values
out of the paged cache into a padded batch and running SDPA: at a handful of short
sequences that is many small ops per layer for little arithmetic. The kernel reads the
keys and values where they sit in the cache blocks, in parallel over (sequence, kv head),
the query heads of a kv head sharing its keys (grouped-query attention); softmax in
float32 in two passes. :func:`paged_decode_attention_cpu` has the signature of
:func:`~openledger.serve.ops.attention_torch.decode_attention`, which it is tested against.

The op::

    paged_decode(Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables,
                 Tensor context_lens, float scale, int sliding_window) -> Tensor

``sliding_window`` <= 0 for none; block tables and lengths are int32; the kernel checks
on every call, before it reads, that the lengths fit the tables and every block id it
reads is in the cache.
"""

from __future__ import annotations

import torch

from openledger.serve.ops.attention_plan import DecodeFn
from openledger.serve.ops.cpu_kernels import cpu_float32
from openledger.serve.ops.cpu_ops import check_contiguous, define, library_or_raise

__all__ = ["cpu_decode_attention", "paged_decode_attention_cpu"]


def paged_decode_attention_cpu(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """The CPU :class:`~openledger.serve.ops.attention_plan.DecodeFn` (arguments and result
    there), ``openledger::paged_decode``: float32 CPU query rows (each row's heads
    contiguous), contiguous float32 caches, context lengths at most ``max_blocks *
    block_size`` (tables and lengths are made int32).

    Raises:
        RuntimeError: The CPU kernels are not built here.
        ValueError: Tensors of the wrong dtype, device, layout or shape.
        MemoryError: The kernel could not allocate its scratch.
    """
    out: torch.Tensor = _PAGED_DECODE(
        query,
        k_cache,
        v_cache,
        block_tables.to(torch.int32),
        context_lens.to(torch.int32),
        float(scale),
        sliding_window or 0,
    )
    return out


def _paged_decode(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    window: int,
) -> torch.Tensor:
    _check(query, k_cache, v_cache, tables, lens)
    batch, heads, dim = query.shape
    num_blocks, block_size, kv_heads, _ = k_cache.shape
    out = torch.empty(batch, heads, dim, dtype=torch.float32)
    if batch == 0:
        return out
    status = library_or_raise().paged_decode(
        query.data_ptr(), query.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
        tables.data_ptr(), tables.stride(0), tables.shape[1], num_blocks, lens.data_ptr(),
        batch, heads, kv_heads, dim, block_size, scale, window, out.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    if status == -2:
        raise ValueError(
            f"context lengths must be in 1..{tables.shape[1] * block_size} "
            f"({tables.shape[1]} blocks of {block_size}), got {lens.tolist()}"
        )
    if status == -3:
        raise ValueError(f"block ids must be in 0..{num_blocks - 1}, got {tables.tolist()}")
    if status != 0:
        raise MemoryError("the CPU decode attention kernel could not allocate its scratch")
    return out


def _check(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
) -> None:
    for name, t in (("query", query), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"{name}: float32 CPU expected, got {t.dtype} {t.device}")
    if query.dim() != 3 or k_cache.dim() != 4:
        raise ValueError(
            f"query {tuple(query.shape)} and caches {tuple(k_cache.shape)}: [B, heads, dim] "
            "and [num_blocks, block_size, kv_heads, dim] expected"
        )
    heads, dim, kv_heads = query.shape[1], query.shape[2], k_cache.shape[2]
    if query.stride(2) != 1 or query.stride(1) != dim:
        raise ValueError(f"query: each row's heads must be contiguous, strides {query.stride()}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    if k_cache.shape != v_cache.shape or k_cache.shape[3] != dim or heads % kv_heads:
        raise ValueError(
            f"query {tuple(query.shape)} does not fit caches {tuple(k_cache.shape)} / "
            f"{tuple(v_cache.shape)} (heads a multiple of kv heads, same head width)"
        )
    if tables.dim() != 2 or tables.shape[0] != query.shape[0] or lens.shape != (query.shape[0],):
        raise ValueError(
            f"block tables {tuple(tables.shape)} and context lengths {tuple(lens.shape)} "
            f"do not fit {query.shape[0]} queries"
        )
    if tables.dtype != torch.int32 or tables.stride(1) != 1:
        raise ValueError("block tables: int32 with contiguous rows expected")
    check_contiguous("context_lens", lens, torch.int32)


define(
    "paged_decode(Tensor query, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
    "Tensor context_lens, float scale, int sliding_window) -> Tensor",
    _paged_decode,
    check=lambda query, k_cache, v_cache, tables, lens, *_: _check(
        query, k_cache, v_cache, tables, lens
    ),
    out=lambda query, *_: query.new_empty(query.shape),
)
_PAGED_DECODE = torch.ops.openledger.paged_decode.default


def cpu_decode_attention(query: torch.Tensor) -> DecodeFn | None:
    """The kernel where it applies to ``query`` (float32 on CPU, kernels built), else None."""
    if not cpu_float32(query):
        return None
    return paged_decode_attention_cpu
