"""``finetune``: a recipe and a snapshot in, an attributable adapter folder out.

::

    data ── sources (records + hashes) ── formatting (ids, loss masks) ── batching
                                                                           │
    recipe ── modeling (base + LoRA) ── ProvenanceTrainer (transformers) ──┤── training log
                                                                           │
                                   export: PEFT folder + training_log.json + manifest
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openledger.exceptions import RecipeError
from openledger.train import setup
from openledger.train.callbacks import LiveLossPlot, ProgressBar, ProvenanceCallback
from openledger.train.export import Adapter
from openledger.train.modeling import load_for_training, wrap_with_lora
from openledger.train.provenance import TrainingLog
from openledger.train.recipe import LoraRecipe
from openledger.train.sources import load_training_data
from openledger.train.trainer import ProvenanceTrainer

if TYPE_CHECKING:
    import torch
    from transformers import TrainerCallback

    from openledger.data import AccessGrant

__all__ = ["TrainingRun", "finetune"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """The outcome of :func:`finetune`.

    Attributes:
        adapter: The exported adapter folder and its manifest.
        metrics: Final metrics: ``train_loss``, ``eval_loss`` and ``eval_perplexity`` (with
            an eval split), ``train_runtime`` seconds, ``tokens_per_second``, counts.
        history: The trainer's log entries (loss per logging step, eval results).
        training_log: Records used by each optimizer step.
        model: The trained PEFT model (in memory, eval mode).
        tokenizer: Its tokenizer.
    """

    adapter: Adapter
    metrics: dict[str, float]
    history: list[dict[str, float]]
    training_log: TrainingLog
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)

    @property
    def output_dir(self) -> Path:
        """The adapter folder."""
        return self.adapter.path


def finetune(
    recipe: LoraRecipe | dict[str, Any] | str | os.PathLike[str],
    data: Any,
    output_dir: str | os.PathLike[str],
    *,
    grant: AccessGrant | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    resume_from_checkpoint: bool | str | os.PathLike[str] | None = None,
    save_steps: int | None = None,
    progress: bool | None = None,
    live_plot: bool | None = None,
    device: str | torch.device | None = None,
) -> TrainingRun:
    """Fine-tune a LoRA adapter on a datanet snapshot and export it with its provenance.

    Every input problem is raised before training starts: empty data, a schema that cannot
    be formatted, a private datanet without a grant, a chat template that never emits EOS,
    a target module the model lacks, data that is all longer than ``max_length``.

    Args:
        recipe: A :class:`LoraRecipe`, its fields as a dict, or a ``.yaml``/``.json`` path.
        data: A snapshot, a datanet (its latest snapshot), a JSONL export path, or records
            (see :func:`openledger.train.sources.load_training_data`).
        output_dir: The adapter folder to write; checkpoints go to ``output_dir/checkpoints``.
        grant: Access grant for a private datanet.
        callbacks: Extra ``transformers.TrainerCallback`` s.
        resume_from_checkpoint: ``True`` for the latest checkpoint in ``output_dir``, or a
            checkpoint folder; training continues exactly where it stopped.
        save_steps: Save a checkpoint every N optimizer steps (default: none).
        progress: Show a progress bar; default when standard error is a terminal.
        live_plot: Draw a live loss plot; default when running in Jupyter with matplotlib.
        device: Training device; default CUDA when available.

    Returns:
        The :class:`TrainingRun`.

    Raises:
        RecipeError: A bad recipe field, or a target module the model lacks.
        TrainDataError: Empty data, a schema that cannot be formatted, or every example
            longer than ``max_length``.
        ChatTemplateError: The chat template never closes an assistant turn with EOS.
        AccessDeniedError: A private datanet without a grant.
        MissingDependencyError: 4bit/8bit quantization without bitsandbytes.
    """
    recipe = _as_recipe(recipe)
    folder = Path(output_dir)
    source = load_training_data(data, grant=grant)
    model, tokenizer = load_for_training(recipe, device)
    prepared = setup.prepare_data(recipe, source, tokenizer)
    model = wrap_with_lora(model, recipe)
    log = TrainingLog([r.record_hash for r in source.records])
    checkpoint = setup.find_checkpoint(folder, resume_from_checkpoint)
    if checkpoint is not None:
        setup.restore_log(log, checkpoint, prepared)
    trainer = ProvenanceTrainer(
        model=model,
        args=setup.training_arguments(recipe, folder, prepared, save_steps, device),
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        data_collator=prepared.collator,
        callbacks=[
            ProvenanceCallback(log),
            *setup.early_stopping(recipe),
            *_ui_callbacks(progress, live_plot),
            *callbacks,
        ],
        training_log=log,
        loraplus_lr_ratio=recipe.loraplus_lr_ratio,
    )
    setup.quiet(trainer)
    if save_steps:
        setup.write_resume_note(folder, recipe, prepared)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    seconds = time.perf_counter() - started
    metrics = _metrics(trainer, output, prepared, seconds)
    model.eval()
    adapter = setup.export(model, tokenizer, folder, recipe, source, log, metrics)
    history = [dict(entry) for entry in trainer.state.log_history]
    return TrainingRun(adapter, metrics, history, log, model, tokenizer)


def _as_recipe(recipe: Any) -> LoraRecipe:
    if isinstance(recipe, LoraRecipe):
        return recipe
    if isinstance(recipe, dict):
        return LoraRecipe.from_dict(recipe)
    if isinstance(recipe, (str, os.PathLike)):
        return LoraRecipe.load(recipe)
    raise RecipeError(f"recipe must be a LoraRecipe, a dict or a file path, got {type(recipe)}")


def _ui_callbacks(progress: bool | None, live_plot: bool | None) -> list[Any]:
    from openledger.train.callbacks import in_jupyter, stderr_is_tty

    found: list[Any] = []
    if progress if progress is not None else stderr_is_tty() or in_jupyter():
        found.append(ProgressBar())
    if live_plot if live_plot is not None else in_jupyter() and setup.has_matplotlib():
        found.append(LiveLossPlot())
    return found


def _metrics(
    trainer: ProvenanceTrainer, output: Any, prepared: setup.PreparedData, seconds: float
) -> dict[str, float]:
    metrics: dict[str, float] = {
        "train_loss": float(output.training_loss),
        "train_runtime": seconds,
        "num_steps": float(trainer.state.global_step),
        "num_tokens_trained": float(trainer.num_tokens_trained),
        "tokens_per_second": trainer.num_tokens_trained / seconds if seconds > 0 else 0.0,
        **{k: float(v) for k, v in prepared.counts.items()},
    }
    if prepared.eval is not None:
        eval_loss = float(trainer.evaluate()["eval_loss"])
        metrics["eval_loss"] = eval_loss
        metrics["eval_perplexity"] = math.exp(min(eval_loss, 50.0))
    return metrics
