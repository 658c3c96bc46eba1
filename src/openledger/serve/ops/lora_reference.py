"""Torch references of the LoRA ops: one einsum per op, slow and obvious.

Every fast path (:mod:`.lora_torch` on CPU, :mod:`.lora_triton` on CUDA) is tested against
these. Shapes: ``T`` tokens, ``H`` input features, ``S`` adapter slots, ``R`` rank (padded
to the largest slot's rank in the stacked form; padding rows and columns hold zeros), ``O``
output features. ``indices[t]`` is token ``t``'s slot; -1 means no adapter (zero update).
"""

from __future__ import annotations

import torch

__all__ = ["lora_expand_reference", "lora_shrink_reference"]


def _token_mask(indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (indices >= 0).to(dtype)[:, None]


def lora_shrink_reference(
    x: torch.Tensor, a_stack: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """``y[t] = A[indices[t]] x[t]``, zero for tokens without an adapter.

    Args:
        x: ``[T, H]`` activations.
        a_stack: ``[S, R, H]`` stacked ``lora_A`` weights.
        indices: ``[T]`` slot per token, -1 for none.

    Returns:
        ``[T, R]`` in float32.
    """
    a = a_stack[indices.clamp(min=0)].float()
    y = torch.einsum("th,trh->tr", x.float(), a)
    return y * _token_mask(indices, y.dtype)


def lora_expand_reference(
    y: torch.Tensor, b_stack: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """``delta[t] = B[indices[t]] y[t]``, zero for tokens without an adapter.

    Args:
        y: ``[T, R]`` shrunk activations.
        b_stack: ``[S, O, R]`` stacked ``lora_B`` weights (scaling folded in).
        indices: ``[T]`` slot per token, -1 for none.

    Returns:
        ``[T, O]`` in float32.
    """
    b = b_stack[indices.clamp(min=0)].float()
    delta = torch.einsum("tr,tor->to", y.float(), b)
    return delta * _token_mask(indices, delta.dtype)
