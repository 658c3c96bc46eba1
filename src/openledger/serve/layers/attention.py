"""Paged self-attention: write this step's keys and values, attend over the block tables."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from openledger.serve.batch import BatchMetadata
from openledger.serve.ops.attention_cpu import cpu_decode_attention
from openledger.serve.ops.attention_torch import store_kv
from openledger.serve.ops.step_attention import DecodeFn, step_attention

__all__ = ["AttentionBackend", "PagedAttention"]

AttentionBackend = Literal["reference", "triton"]


class PagedAttention(nn.Module):
    """Attention over a paged KV cache for one layer.

    The model runner binds ``k_cache`` / ``v_cache`` (``[num_blocks, block_size, kv_heads,
    dim]``) before the first step. With the step plan (:attr:`BatchMetadata.attention`, built
    once per step by the runner) prompt chunks and decode rows run batched together
    (:func:`openledger.serve.ops.step_attention.step_attention`). Decode rows take the Triton
    kernel when
    ``backend == "triton"``, else on CPU in float32 the compiled kernel
    (:mod:`~openledger.serve.ops.attention_cpu`) where it is built. A layer whose window
    differs from the step plan's (Gemma's local and global layers) attends with
    :meth:`~openledger.serve.ops.attention_plan.AttentionPlan.for_window`'s masks. With
    logit soft-capping (Gemma 2) every row takes the torch path: no kernel caps scores.

    Args:
        num_heads: Query heads.
        num_kv_heads: Key/value heads.
        head_dim: Width of a head.
        sliding_window: This layer's window, None for full attention.
        backend: ``"reference"`` or ``"triton"``.
        scale: Softmax scale; None for ``head_dim ** -0.5``.
        softcap: Attention logit soft-capping, None for none.

    Attributes:
        use_cpu_kernels: Whether the compiled CPU decode kernel may run
            (``EngineConfig.cpu_kernels``).
    """

    use_cpu_kernels = True

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        sliding_window: int | None = None,
        backend: AttentionBackend = "reference",
        scale: float | None = None,
        softcap: float | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.softcap = softcap
        self.sliding_window = sliding_window
        self.backend: AttentionBackend = backend
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, batch: BatchMetadata
    ) -> torch.Tensor:
        """Attend ``query [T, heads, dim]`` given the new ``key``/``value [T, kv_heads, dim]``.

        Returns:
            ``[T, heads, dim]``.
        """
        store_kv(key, value, self.k_cache, self.v_cache, batch.slot_mapping)
        # NOTE: the step plan (mixed prompt chunks and decode rows) is shared by all layers.
        return step_attention(
            query,
            self.k_cache,
            self.v_cache,
            batch.attention.for_window(self.sliding_window),
            scale=self.scale,
            sliding_window=self.sliding_window,
            decode=None if self.softcap is not None else self._decode_kernel(query),
            softcap=self.softcap,
        )

    def _decode_kernel(self, query: torch.Tensor) -> DecodeFn | None:
        """The paged decode kernel for ``query``: Triton's with ``backend="triton"``, the
        compiled CPU one for float32 on CPU where it is built, else None (gather + SDPA)."""
        if self.backend != "triton":
            return cpu_decode_attention(query) if self.use_cpu_kernels else None
        from openledger.serve.ops.attention_triton import paged_decode_attention

        return paged_decode_attention
