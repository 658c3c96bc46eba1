"""The transformers ``Trainer`` subclass that logs which records each step learnt from.

Batches carry ``record_ids`` and ``num_tokens`` next to the model inputs (see
:mod:`.batching`); :meth:`ProvenanceTrainer.compute_loss` takes both out before the forward
pass, feeds the record ids to the :class:`~.provenance.TrainingLog` while training (not
while evaluating), and counts the tokens trained on. Everything else (device placement,
gradient accumulation, accelerate / torchrun, checkpoints, resume) is the stock Trainer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Trainer

from openledger.train.provenance import TrainingLog

__all__ = ["ProvenanceTrainer"]


class ProvenanceTrainer(Trainer):
    """A ``Trainer`` that writes each micro-batch's source records to a training log.

    Args:
        training_log: Receives the record indices of every training micro-batch.
        loraplus_lr_ratio: When set, use PEFT's LoRA+ optimizer with this ratio.
        *args: Passed to ``Trainer``.
        **kwargs: Passed to ``Trainer``.
    """

    def __init__(
        self,
        *args: Any,
        training_log: TrainingLog,
        loraplus_lr_ratio: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.training_log = training_log
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.num_tokens_trained = 0

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Take the provenance columns out of the batch, log them, and compute the loss."""
        record_ids = inputs.pop("record_ids", None)
        num_tokens = inputs.pop("num_tokens", None)
        if model.training and record_ids is not None:
            self.training_log.feed(_gathered(record_ids))
            if num_tokens is not None:
                self.num_tokens_trained += int(num_tokens.sum())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``eval_perplexity`` next to every ``eval_loss``, then log as usual."""
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(float(logs["eval_loss"]), 50.0))
        super().log(logs, start_time)

    def create_optimizer(self, model: Any = None) -> Any:
        """Use PEFT's LoRA+ optimizer when the recipe asks for it, else the default."""
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer(model)
        from peft.optimizers import create_loraplus_optimizer

        target: Any = self.model if model is None else model
        self.optimizer = create_loraplus_optimizer(
            target,
            torch.optim.AdamW,
            lr=self.args.learning_rate,
            loraplus_lr_ratio=self.loraplus_lr_ratio,
            weight_decay=self.args.weight_decay,
        )
        return self.optimizer


def _gathered(record_ids: torch.Tensor) -> list[int]:
    """Return the record ids of this micro-batch from every process, rank by rank.

    NOTE: under torchrun each process sees its own shard of the batch; every process keeps
    the whole step's records, so the log (and its root) is the same on all of them.
    """
    local = record_ids.flatten().tolist()
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [int(i) for i in local]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [int(i) for part in parts for i in part]
