"""What one forward pass needs besides the tokens: positions, KV slots, block tables."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openledger.serve.ops.step_attention import AttentionPlan

__all__ = ["BatchMetadata"]


@dataclass(slots=True)
class BatchMetadata:
    """Per-step batch layout shared by every layer of the model.

    Tokens of all sequences are flattened into one dimension ``T``, one sequence after
    another (``host_query_lens`` tokens each). In a decode step every sequence has exactly
    one token; a mixed step has prompt chunks and decode tokens side by side. (The LoRA
    layers get the step's adapters from their own state, set by the runner.)

    Attributes:
        is_prefill: Whether any sequence has several tokens (else: decode, one each).
        positions: ``[T]`` int64 position of each token in its sequence.
        slot_mapping: ``[T]`` int64 flat KV-cache slot (``block * block_size + offset``)
            where each token's key and value are written.
        block_tables: ``[B, max_blocks]`` int32 block ids, right-padded with 0.
        context_lens: ``[B]`` int32 tokens of each sequence visible after this step's writes.
        logits_indices: ``[S]`` int64 row of the last token of each sequence sampled in
            this step (those whose prompt chunk does not reach their end are not).
        host_query_lens: Query lengths as Python ints (the reference path loops on them).
        host_context_lens: Context lengths as Python ints.
        host_long_context: Whether each sequence is computed in a LongRoPE model's
            long-context regime (``SequenceState.long_context``; read by LongRoPE only).
        attention: Gather indices and masks of the step's attention, built once for all
            layers.
    """

    is_prefill: bool
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    logits_indices: torch.Tensor
    host_query_lens: list[int]
    host_context_lens: list[int]
    host_long_context: list[bool]
    attention: AttentionPlan

    @property
    def num_seqs(self) -> int:
        """Sequences in the batch."""
        return len(self.host_query_lens)
