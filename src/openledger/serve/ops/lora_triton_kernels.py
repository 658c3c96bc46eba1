"""The Triton LoRA kernels themselves (device code); :mod:`.lora_triton` checks and launches
them.

SGMV programs take a tile of one segment's rows (a run of tokens of one slot, prefill);
BGMV programs one token each, gathering its own slot's weights (decode). Rows past a
slot's rank are masked, never read. The kernels' pointer and size parameters carry no
annotations: Triton's compiler resolves every annotation as a global of this module, and
only ``tl.constexpr`` is one it accepts.
"""

from __future__ import annotations

from openledger.exceptions import MissingDependencyError

try:
    import triton  # type: ignore[import-untyped]
    import triton.language as tl  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the triton LoRA kernels need `pip install openledger[gpu]`"
    ) from exc

__all__ = ["bgmv_expand_kernel", "bgmv_shrink_kernel", "sgmv_expand_kernel", "sgmv_shrink_kernel"]


@triton.jit  # type: ignore[untyped-decorator]
def _segment_rows(starts_ptr, lengths_ptr, slots_ptr, ranks_ptr, BLOCK_M: tl.constexpr):  # type: ignore[no-untyped-def]
    """This program's segment (axis 0) and tile of its rows (axis 1): the slot, its rank,
    the token rows and which of them are inside the segment."""
    seg = tl.program_id(0)
    slot = tl.load(slots_ptr + seg).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = (tl.load(starts_ptr + seg) + offs_m).to(tl.int64)
    return slot, tl.load(ranks_ptr + slot), rows, offs_m < tl.load(lengths_ptr + seg)


@triton.jit
def _token_slot(token, indices_ptr, ranks_ptr):  # type: ignore[no-untyped-def]
    """A token's slot (0 for none) and its rank (0 for none: nothing is read or written)."""
    slot = tl.load(indices_ptr + token).to(tl.int64)
    valid = (slot >= 0).to(tl.int32)
    slot = tl.maximum(slot, 0)
    return slot, tl.load(ranks_ptr + slot) * valid


@triton.jit  # type: ignore[untyped-decorator]
def sgmv_shrink_kernel(  # type: ignore[no-untyped-def]
    x_ptr, a_ptr, y_ptr, starts_ptr, lengths_ptr, slots_ptr,
    ranks_ptr, hidden, stride_xt, stride_as, stride_ar,
    stride_yt, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
) -> None:  # fmt: skip
    slot, rank, rows, m_mask = _segment_rows(starts_ptr, lengths_ptr, slots_ptr, ranks_ptr, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    r_mask = offs_r < rank
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < hidden
        x_tile = tl.load(
            x_ptr + rows[:, None] * stride_xt + k[None, :],
            mask=m_mask[:, None] & k_mask[None, :], other=0.0,
        )  # fmt: skip
        a_tile = tl.load(
            a_ptr + slot * stride_as + offs_r[None, :] * stride_ar + k[:, None],
            mask=r_mask[None, :] & k_mask[:, None], other=0.0,
        )  # fmt: skip
        if IEEE:  # float32 weights: full-precision products, not TF32
            acc = tl.dot(x_tile, a_tile, acc, input_precision="ieee")
        else:
            acc = tl.dot(x_tile, a_tile, acc)
    y_ptrs = y_ptr + rows[:, None] * stride_yt + offs_r[None, :]
    tl.store(y_ptrs, acc, mask=m_mask[:, None] & r_mask[None, :])


@triton.jit  # type: ignore[untyped-decorator]
def sgmv_expand_kernel(  # type: ignore[no-untyped-def]
    y_ptr, b_ptr, out_ptr, starts_ptr, lengths_ptr, slots_ptr,
    ranks_ptr, out_features, stride_yt, stride_bs, stride_bo,
    stride_ot, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    IEEE: tl.constexpr,
) -> None:  # fmt: skip
    slot, rank, rows, m_mask = _segment_rows(starts_ptr, lengths_ptr, slots_ptr, ranks_ptr, BLOCK_M)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    n_mask = offs_n < out_features
    r_mask = offs_r < rank
    y_tile = tl.load(
        y_ptr + rows[:, None] * stride_yt + offs_r[None, :],
        mask=m_mask[:, None] & r_mask[None, :], other=0.0,
    )  # fmt: skip
    b_tile = tl.load(
        b_ptr + slot * stride_bs + offs_n[None, :] * stride_bo + offs_r[:, None],
        mask=r_mask[:, None] & n_mask[None, :], other=0.0,
    )  # fmt: skip
    if IEEE:
        delta = tl.dot(y_tile, b_tile, input_precision="ieee")
    else:  # the shrink's float32 rows meet B in B's half type, as PEFT's second matmul does
        delta = tl.dot(y_tile.to(b_tile.dtype), b_tile)
    out_ptrs = out_ptr + rows[:, None] * stride_ot + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    current = tl.load(out_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptrs, (current + delta).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit  # type: ignore[untyped-decorator]
def bgmv_shrink_kernel(  # type: ignore[no-untyped-def]
    x_ptr, a_ptr, y_ptr, indices_ptr, ranks_ptr, hidden, width,
    stride_xt, stride_as, stride_ar, stride_yt,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
) -> None:  # fmt: skip
    token = tl.program_id(0).to(tl.int64)
    slot, rank = _token_slot(token, indices_ptr, ranks_ptr)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    r_mask = offs_r < rank
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < hidden
        x_row = tl.load(x_ptr + token * stride_xt + k, mask=k_mask, other=0.0).to(tl.float32)
        a_tile = tl.load(
            a_ptr + slot * stride_as + offs_r[:, None] * stride_ar + k[None, :],
            mask=r_mask[:, None] & k_mask[None, :], other=0.0,
        ).to(tl.float32)  # fmt: skip
        acc += tl.sum(a_tile * x_row[None, :], 1)
    # NOTE: the whole row, zeros past the rank (and for no adapter): y needs no zero fill
    tl.store(y_ptr + token * stride_yt + offs_r, acc, mask=offs_r < width)


@triton.jit  # type: ignore[untyped-decorator]
def bgmv_expand_kernel(  # type: ignore[no-untyped-def]
    y_ptr, b_ptr, out_ptr, indices_ptr, ranks_ptr, out_features,
    stride_yt, stride_bs, stride_bo, stride_ot,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
) -> None:  # fmt: skip
    token = tl.program_id(0).to(tl.int64)
    slot, rank = _token_slot(token, indices_ptr, ranks_ptr)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    n_mask = (offs_n < out_features) & (offs_n * 0 + rank > 0)
    y_row = tl.load(y_ptr + token * stride_yt + offs_r, mask=r_mask, other=0.0)
    b_tile = tl.load(
        b_ptr + slot * stride_bs + offs_n[:, None] * stride_bo + offs_r[None, :],
        mask=n_mask[:, None] & r_mask[None, :], other=0.0,
    ).to(tl.float32)  # fmt: skip
    delta = tl.sum(b_tile * y_row[None, :], 1)
    out_ptrs = out_ptr + token * stride_ot + offs_n
    current = tl.load(out_ptrs, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptrs, (current + delta).to(out_ptr.dtype.element_ty), mask=n_mask)
