"""What rank 0 sends the other ranks for one step: the step's layout as plain lists.

Every rank builds the same tensors and attention plan from it (on its own device), sets
the same LoRA step, and runs the same forward pass and logits calls, so that their
collectives meet in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openledger.serve.batch import BatchMetadata
from openledger.serve.ops.step_attention import plan_attention
from openledger.serve.sequence import SequenceState

__all__ = ["StepInputs"]


@dataclass(slots=True)
class StepInputs:
    """One step's flattened tokens and metadata (see :class:`BatchMetadata`).

    Attributes:
        input_ids: ``[T]`` token ids, sequence after sequence.
        positions: ``[T]`` positions.
        slot_mapping: ``[T]`` KV-cache slots written.
        logits_indices: Rows whose logits are computed (one per completed sequence).
        query_lens: Tokens of each sequence in this step.
        context_lens: Tokens of each sequence visible after this step's writes.
        long_context: Whether each sequence is in a LongRoPE model's long regime.
        block_tables: Each sequence's block ids.
        adapter_slots: Each sequence's adapter slot (-1: none).
        logits_slots: The adapter slot of each row of ``logits_indices``.
    """

    input_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    logits_indices: list[int]
    query_lens: list[int]
    context_lens: list[int]
    long_context: list[bool]
    block_tables: list[list[int]]
    adapter_slots: list[int]
    logits_slots: list[int]

    @classmethod
    def of(
        cls, input_ids: torch.Tensor, batch: BatchMetadata, seqs: list[SequenceState]
    ) -> StepInputs:
        """The inputs rank 0 prepared for ``seqs`` (its runner's ``prepare``)."""
        done = [seq for seq in seqs if seq.num_computed_tokens == len(seq)]
        return cls(
            input_ids=input_ids.tolist(),
            positions=batch.positions.tolist(),
            slot_mapping=batch.slot_mapping.tolist(),
            logits_indices=batch.logits_indices.tolist(),
            query_lens=list(batch.host_query_lens),
            context_lens=list(batch.host_context_lens),
            long_context=list(batch.host_long_context),
            block_tables=[list(seq.block_table) for seq in seqs],
            adapter_slots=[seq.adapter_index for seq in seqs],
            logits_slots=[seq.adapter_index for seq in done],
        )

    def tensors(
        self, device: torch.device, block_size: int, sliding_window: int | None
    ) -> tuple[torch.Tensor, BatchMetadata]:
        """The token ids and batch metadata on ``device``, as rank 0 built them."""
        width = max(len(table) for table in self.block_tables)
        tables = [table + [0] * (width - len(table)) for table in self.block_tables]

        def tensor(values: list[int] | list[list[int]], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        batch = BatchMetadata(
            is_prefill=any(n > 1 for n in self.query_lens),
            positions=tensor(self.positions, torch.int64),
            slot_mapping=tensor(self.slot_mapping, torch.int64),
            block_tables=tensor(tables, torch.int32),
            context_lens=tensor(self.context_lens, torch.int32),
            logits_indices=tensor(self.logits_indices, torch.int64),
            host_query_lens=list(self.query_lens),
            host_context_lens=list(self.context_lens),
            host_long_context=list(self.long_context),
            attention=plan_attention(
                self.query_lens,
                self.context_lens,
                self.block_tables,
                block_size=block_size,
                sliding_window=sliding_window,
                device=device,
            ),
        )
        return tensor(self.input_ids, torch.int64), batch
