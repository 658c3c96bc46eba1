"""Triton LoRA kernels (CUDA; also run under ``TRITON_INTERPRET=1`` on CPU tensors).

Two families, both over stacked slot weights ``A [S, R, H]`` and ``B [S, O, R]`` whose
rows past each slot's rank are zero and are never read (``ranks[slot]`` masks them):

* SGMV, for prefill: the tokens form runs ("segments") sharing one slot; one program
  computes a tile of a segment's rows with ``tl.dot``.
* BGMV, for decode: one program per token gathers its own slot's weights (one row each,
  so a reduction instead of a matmul).

References (one einsum each): :func:`.lora_reference.lora_shrink_reference` for the
shrinks, :func:`.lora_reference.lora_expand_reference` for the expands. The wrappers check
dtype, shape and contiguity before every launch.

With float32 weights the SGMV products run in IEEE float32 (``tl.dot`` would otherwise
round its inputs to TF32 on NVIDIA GPUs); with float16/bfloat16 the shrink's float32 rows
are rounded to the weights' type before the expand, as PEFT's second matmul does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openledger.exceptions import MissingDependencyError

try:
    import triton  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the triton LoRA kernels need `pip install openledger[gpu]`"
    ) from exc

from openledger.serve.ops.lora_triton_kernels import (
    bgmv_expand_kernel,
    bgmv_shrink_kernel,
    sgmv_expand_kernel,
    sgmv_shrink_kernel,
)

__all__ = [
    "LoraSegments",
    "bgmv_expand",
    "bgmv_shrink",
    "sgmv_expand",
    "sgmv_shrink",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK_M = 16
_BLOCK_N = 32
_BLOCK_K = 32


@dataclass(frozen=True, slots=True)
class LoraSegments:
    """Runs of consecutive tokens sharing one adapter slot (runs of -1 left out), as
    :attr:`LoraStep.lora_segments <openledger.serve.ops.lora_step.LoraStep.lora_segments>`
    builds them.

    Attributes:
        starts: ``[G]`` int32 first token of each run.
        lengths: ``[G]`` int32 tokens in each run.
        slots: ``[G]`` int32 slot of each run.
        max_length: The longest run (sizes the launch grid).
    """

    starts: torch.Tensor
    lengths: torch.Tensor
    slots: torch.Tensor
    max_length: int


def _block_r(rank: int) -> int:
    return max(16, int(triton.next_power_of_2(rank)))


def _check_stack(name: str, stack: torch.Tensor, ranks: torch.Tensor, dtype: torch.dtype) -> None:
    # NOTE: internal contract between the LoRA layer and the kernels; a mismatch is a bug.
    if stack.dim() != 3 or not stack.is_contiguous():
        raise ValueError(f"{name} must be a contiguous [S, rows, cols] stack: {stack.shape}")
    if stack.dtype != dtype:
        raise ValueError(f"{name} dtype {stack.dtype} differs from the activations' {dtype}")
    if ranks.dtype != torch.int32 or ranks.shape != (stack.shape[0],):
        raise ValueError(f"ranks must be int32 [{stack.shape[0]}], got {ranks.dtype} {ranks.shape}")


def _check_rows(name: str, t: torch.Tensor, width: int, dtypes: tuple[torch.dtype, ...]) -> None:
    if t.dim() != 2 or t.shape[1] != width or t.stride(1) != 1:
        raise ValueError(f"{name} must be [T, {width}] with unit column stride: {t.shape}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} dtype {t.dtype} is not one of {dtypes}")


def sgmv_shrink(
    x: torch.Tensor, a_stack: torch.Tensor, ranks: torch.Tensor, segments: LoraSegments
) -> torch.Tensor:
    """Segmented shrink; same result as :func:`.lora_shrink_reference`.

    Args:
        x: ``[T, H]`` activations, float16/bfloat16/float32, unit column stride.
        a_stack: ``[S, R, H]`` contiguous, ``x``'s dtype.
        ranks: ``[S]`` int32 rank of each slot (rows past it are never read).
        segments: The token runs (see :func:`lora_segments`).

    Returns:
        ``[T, R]`` float32; zero rows for tokens without an adapter.
    """
    _check_rows("x", x, a_stack.shape[2], _FLOATS)
    _check_stack("a_stack", a_stack, ranks, x.dtype)
    y = torch.zeros(x.shape[0], a_stack.shape[1], dtype=torch.float32, device=x.device)
    if segments.max_length == 0:
        return y
    grid = (segments.starts.shape[0], triton.cdiv(segments.max_length, _BLOCK_M))
    sgmv_shrink_kernel[grid](
        x, a_stack, y, segments.starts, segments.lengths, segments.slots, ranks,
        x.shape[1], x.stride(0), a_stack.stride(0), a_stack.stride(1), y.stride(0),
        BLOCK_M=_BLOCK_M, BLOCK_R=_block_r(a_stack.shape[1]), BLOCK_K=_BLOCK_K,
        IEEE=x.dtype == torch.float32,
    )  # fmt: skip
    return y


def sgmv_expand(
    y: torch.Tensor,
    b_stack: torch.Tensor,
    ranks: torch.Tensor,
    segments: LoraSegments,
    out: torch.Tensor,
) -> None:
    """Segmented expand: ``out += lora_expand_reference(y, b_stack, indices)`` in place.

    Args:
        y: ``[T, R]`` float32 from a shrink.
        b_stack: ``[S, O, R]`` contiguous, ``out``'s dtype.
        ranks: ``[S]`` int32.
        segments: The token runs.
        out: ``[T, O]``, unit column stride (a column slice of a fused output is fine).
    """
    _check_rows("y", y, b_stack.shape[2], (torch.float32,))
    _check_rows("out", out, b_stack.shape[1], _FLOATS)
    _check_stack("b_stack", b_stack, ranks, out.dtype)
    if segments.max_length == 0:
        return
    grid = (
        segments.starts.shape[0],
        triton.cdiv(segments.max_length, _BLOCK_M),
        triton.cdiv(out.shape[1], _BLOCK_N),
    )
    sgmv_expand_kernel[grid](
        y, b_stack, out, segments.starts, segments.lengths, segments.slots, ranks,
        out.shape[1], y.stride(0), b_stack.stride(0), b_stack.stride(1), out.stride(0),
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_R=_block_r(b_stack.shape[2]),
        IEEE=out.dtype == torch.float32,
    )  # fmt: skip


def _check_indices(indices: torch.Tensor, num_tokens: int) -> None:
    if indices.shape != (num_tokens,) or indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"indices must be int32/int64 [{num_tokens}]: {indices.shape}")


def bgmv_shrink(
    x: torch.Tensor, a_stack: torch.Tensor, ranks: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """Per-token gathered shrink (decode); same result as :func:`.lora_shrink_reference`.

    Args:
        x: ``[T, H]`` activations.
        a_stack: ``[S, R, H]`` contiguous, ``x``'s dtype.
        ranks: ``[S]`` int32.
        indices: ``[T]`` slot per token, -1 for none.

    Returns:
        ``[T, R]`` float32; zeros past each token's rank and for tokens without an adapter.
    """
    _check_rows("x", x, a_stack.shape[2], _FLOATS)
    _check_stack("a_stack", a_stack, ranks, x.dtype)
    _check_indices(indices, x.shape[0])
    y = torch.empty(x.shape[0], a_stack.shape[1], dtype=torch.float32, device=x.device)
    if x.shape[0] == 0:
        return y
    bgmv_shrink_kernel[(x.shape[0],)](
        x, a_stack, y, indices, ranks, x.shape[1], y.shape[1], x.stride(0), a_stack.stride(0),
        a_stack.stride(1), y.stride(0), BLOCK_R=_block_r(a_stack.shape[1]), BLOCK_K=_BLOCK_K,
    )  # fmt: skip
    return y


def bgmv_expand(
    y: torch.Tensor,
    b_stack: torch.Tensor,
    ranks: torch.Tensor,
    indices: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Per-token gathered expand (decode): ``out += lora_expand_reference(...)`` in place.

    Args:
        y: ``[T, R]`` float32.
        b_stack: ``[S, O, R]`` contiguous, ``out``'s dtype.
        ranks: ``[S]`` int32.
        indices: ``[T]`` slot per token, -1 for none.
        out: ``[T, O]``, unit column stride.
    """
    _check_rows("y", y, b_stack.shape[2], (torch.float32,))
    _check_rows("out", out, b_stack.shape[1], _FLOATS)
    _check_stack("b_stack", b_stack, ranks, out.dtype)
    _check_indices(indices, y.shape[0])
    if y.shape[0] == 0:
        return
    grid = (y.shape[0], triton.cdiv(out.shape[1], _BLOCK_N))
    bgmv_expand_kernel[grid](
        y, b_stack, out, indices, ranks, out.shape[1], y.stride(0), b_stack.stride(0),
        b_stack.stride(1), out.stride(0), BLOCK_N=_BLOCK_N, BLOCK_R=_block_r(b_stack.shape[2]),
    )  # fmt: skip
