"""Triton paged-attention decode kernel (CUDA; also runs under ``TRITON_INTERPRET=1``).

One program per (sequence, query head) walks the sequence's block table, block by block,
with an online softmax, so no gathered copy of the context is ever made. Its reference is
:func:`openledger.serve.ops.attention_torch.decode_attention`. The kernel's pointer and scalar
parameters carry no annotations: Triton's compiler resolves every annotation as a global of
this module, and only ``tl.constexpr`` is one it accepts.
"""

from __future__ import annotations

import torch

from openledger.exceptions import MissingDependencyError

try:
    import triton  # type: ignore[import-untyped]
    import triton.language as tl  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the triton attention backend needs `pip install openledger[gpu]`"
    ) from exc

__all__ = ["paged_decode_attention"]

_NO_WINDOW = 1 << 30  # a window longer than any context


@triton.jit  # type: ignore[untyped-decorator]
def _paged_decode_kernel(  # type: ignore[no-untyped-def]
    out_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    scale,
    window,
    stride_qb,
    stride_qh,
    stride_ob,
    stride_oh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_tb,
    GROUP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
) -> None:
    seq = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    context_len = tl.load(context_lens_ptr + seq)
    start = tl.maximum(context_len - window, 0)
    offs_d = tl.arange(0, BLOCK_D)
    offs_s = tl.arange(0, BLOCK_SIZE)
    d_mask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + head * stride_qh + offs_d, mask=d_mask, other=0.0)
    q = q.to(tl.float32)
    m_i = tl.max(tl.full([BLOCK_SIZE], float("-inf"), tl.float32), 0)
    l_i = tl.sum(tl.zeros([BLOCK_SIZE], tl.float32), 0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for index in range(start // BLOCK_SIZE, tl.cdiv(context_len, BLOCK_SIZE)):
        block = tl.load(block_tables_ptr + seq * stride_tb + index).to(tl.int64)
        pos = index * BLOCK_SIZE + offs_s
        valid = (pos < context_len) & (pos >= start)
        offsets = block * stride_cb + offs_s[:, None] * stride_cs + kv_head * stride_ch
        mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + offsets + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        scores = tl.where(valid, tl.sum(k * q[None, :], 1) * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 0))
        p = tl.exp(scores - m_new)
        alpha = tl.exp(m_i - m_new)
        v = tl.load(v_cache_ptr + offsets + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
    out = acc / l_i
    out_ptrs = out_ptr + seq * stride_ob + head * stride_oh + offs_d
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def paged_decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """The Triton :class:`~openledger.serve.ops.attention_plan.DecodeFn` (arguments and
    result there): contiguous caches of one dtype whose block size is a power of two, int32
    block tables and context lengths.

    Raises:
        ValueError: Tensors that do not fit each other or the kernel.
    """
    _check_inputs(query, k_cache, v_cache, block_tables, context_lens)
    batch, heads, dim = query.shape
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(query)
    _paged_decode_kernel[(batch, heads)](
        out,
        query,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        scale,
        sliding_window or _NO_WINDOW,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        GROUP=heads // kv_heads,
        BLOCK_SIZE=block_size,
        HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
    )
    return out


def _check_inputs(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
) -> None:
    # NOTE: internal contract between the runner and the kernel; a mismatch is a bug.
    if query.dim() != 3 or query.stride(-1) != 1:
        raise ValueError(f"query must be [B, heads, dim] with unit last stride: {query.shape}")
    if k_cache.shape != v_cache.shape or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous and of the same shape")
    if query.shape[1] % k_cache.shape[2] or query.shape[2] != k_cache.shape[3]:
        raise ValueError(f"query {tuple(query.shape)} does not fit cache {tuple(k_cache.shape)}")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32:
        raise ValueError("block_tables and context_lens must be int32")
    if k_cache.shape[1] & (k_cache.shape[1] - 1):
        raise ValueError(f"block size must be a power of two, got {k_cache.shape[1]}")
