"""The steps :func:`openledger.train.finetune` runs around the trainer.

Data preparation (split, format, EOS check, packing), trainer arguments, checkpoint
resume, and the export of the adapter folder with its manifest.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openledger import __version__
from openledger.crypto import keccak256_hex
from openledger.exceptions import ConfigError, TrainDataError
from openledger.models import resolve_model
from openledger.train.batching import ExampleDataset, collate, pack_examples
from openledger.train.export import (
    Adapter,
    AdapterManifest,
    adapter_id,
    chat_template_hash,
    weights_hash,
    write_manifest,
)
from openledger.train.formatting import check_eos, format_records, record_messages
from openledger.train.provenance import TRAINING_LOG_FILE, TrainingLog
from openledger.train.recipe import LoraRecipe
from openledger.train.sources import TrainingData, split_indices
from openledger.types import Hash32

if TYPE_CHECKING:
    import torch

__all__ = [
    "PreparedData",
    "export",
    "find_checkpoint",
    "has_matplotlib",
    "prepare_data",
    "quiet",
    "restore_log",
    "training_arguments",
    "write_resume_note",
]

_RESUME_NOTE = "openledger_resume.json"


@dataclass(frozen=True)
class PreparedData:
    """Tokenised train and eval sets, ready for the trainer.

    Attributes:
        train: Training examples (packed when the recipe says so).
        eval: Held-out examples, or ``None`` without an eval split.
        collator: Turns a list of examples into a batch.
        counts: ``num_records``, ``num_train_records``, ``num_eval_records``,
            ``num_dropped_too_long``, ``num_dropped_no_target``.
        data_hash: keccak256 over the training examples' record hashes in order (a resumed
            run must see the same data).
    """

    train: ExampleDataset
    eval: ExampleDataset | None
    collator: Callable[[list[Any]], dict[str, Any]]
    counts: dict[str, int]
    data_hash: Hash32


def prepare_data(recipe: LoraRecipe, source: TrainingData, tokenizer: Any) -> PreparedData:
    """Check the template, split, tokenise and (optionally) pack the training data.

    Raises:
        ChatTemplateError: The template never ends assistant turns with EOS.
        TrainDataError: Nothing fits ``max_length``, or nothing is left to train on.
    """
    records = [s.record for s in source.records]
    if any(record_messages(r) is not None for r in records):
        check_eos(tokenizer)
    train_ids, eval_ids = split_indices(source, recipe.eval_split, recipe.seed)
    formatted = format_records(records, tokenizer, max_length=recipe.max_length)
    held = set(eval_ids)
    train = [e for e in formatted.examples if e.records[0] not in held]
    evals = [e for e in formatted.examples if e.records[0] in held]
    if not train:
        raise TrainDataError("no training record is left after the eval split and length limit")
    if recipe.packing:
        train = pack_examples(train, recipe.max_length)
    digest = b"".join(
        bytes.fromhex(source.records[i].record_hash[2:]) for e in train for i in e.records
    )
    counts = {
        "num_records": len(records),
        "num_train_records": len(train_ids),
        "num_eval_records": len(eval_ids),
        "num_dropped_too_long": formatted.num_too_long,
        "num_dropped_no_target": formatted.num_no_target,
    }
    return PreparedData(
        ExampleDataset(train),
        ExampleDataset(evals) if evals else None,
        functools.partial(collate, pad_token_id=int(tokenizer.pad_token_id)),
        counts,
        keccak256_hex(digest),
    )


def training_arguments(
    recipe: LoraRecipe,
    folder: Path,
    prepared: PreparedData,
    save_steps: int | None,
    device: str | torch.device | None,
) -> Any:
    """Return the ``TrainingArguments`` of a recipe (checkpoints in ``folder/checkpoints``)."""
    from transformers import TrainingArguments

    from openledger.models.loading import parse_device

    evaluate = prepared.eval is not None
    every = "steps" if recipe.eval_steps else "epoch"
    target = parse_device(device)
    return TrainingArguments(
        output_dir=str(folder / "checkpoints"),
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation,
        learning_rate=recipe.learning_rate,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        lr_scheduler_type=recipe.scheduler,
        warmup_steps=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        seed=recipe.seed,
        data_seed=recipe.seed,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy=every if evaluate else "no",
        eval_steps=recipe.eval_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        metric_for_best_model="eval_loss" if recipe.early_stopping_patience else None,
        greater_is_better=False if recipe.early_stopping_patience else None,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=target.type == "cpu",
        bf16=target.type == "cuda" and recipe.dtype in (None, "bfloat16"),
        fp16=target.type == "cuda" and recipe.dtype == "float16",
    )


def early_stopping(recipe: LoraRecipe) -> list[Any]:
    """Return transformers' early-stopping callback when the recipe asks for it."""
    if recipe.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=recipe.early_stopping_patience)]


def quiet(trainer: Any) -> None:
    """Remove the trainer's printing callback (openledger shows its own progress bar)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def has_matplotlib() -> bool:
    """Whether matplotlib and IPython can be imported (for the live plot)."""
    return all(importlib.util.find_spec(m) is not None for m in ("matplotlib", "IPython"))


# -- resume --------------------------------------------------------------------------------


def find_checkpoint(folder: Path, resume: Any) -> Path | None:
    """Return the checkpoint to resume from, or ``None`` for a fresh run.

    Raises:
        ConfigError: If ``resume`` is ``True`` and there is no checkpoint, or a given
            checkpoint folder does not exist.
    """
    if resume is None or resume is False:
        return None
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        root = folder / "checkpoints"
        last = get_last_checkpoint(str(root)) if root.is_dir() else None  # type: ignore[no-untyped-call]
        if last is None:
            raise ConfigError(f"resume_from_checkpoint=True but {root} holds no checkpoint")
        return Path(last)
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"resume_from_checkpoint: {path} is not a trainer checkpoint")
    return path


def write_resume_note(folder: Path, recipe: LoraRecipe, prepared: PreparedData) -> None:
    """Record what data the checkpoints in ``folder/checkpoints`` were trained on."""
    root = folder / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    note = {"data_hash": prepared.data_hash, "recipe_hash": recipe.hash}
    (root / _RESUME_NOTE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")


def restore_log(log: TrainingLog, checkpoint: Path, prepared: PreparedData) -> None:
    """Load the training log saved with a checkpoint, cut at the checkpoint's step.

    Raises:
        TrainDataError: If the checkpoint was trained on other data.
    """
    note_file = checkpoint.parent / _RESUME_NOTE
    if note_file.is_file():
        note = json.loads(note_file.read_text(encoding="utf-8"))
        if note.get("data_hash") != prepared.data_hash:
            raise TrainDataError(
                f"{checkpoint} was trained on other data (or another split or max_length); "
                "resume with the same data and recipe"
            )
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    saved = TrainingLog.load(checkpoint / TRAINING_LOG_FILE)
    log.steps = list(saved.steps)
    log.truncate(int(state["global_step"]))


# -- export --------------------------------------------------------------------------------


def export(
    model: Any,
    tokenizer: Any,
    folder: Path,
    recipe: LoraRecipe,
    source: TrainingData,
    log: TrainingLog,
    metrics: dict[str, float],
) -> Adapter:
    """Write the PEFT adapter files, the training log and the manifest into ``folder``."""
    import peft
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    log.save(folder / TRAINING_LOG_FILE)
    manifest = AdapterManifest(
        adapter_id=adapter_id(folder),
        base_model=recipe.base_model,
        base_model_weights_hash=_base_hash(recipe.base_model),
        recipe=recipe.to_dict(),
        recipe_hash=recipe.hash,
        chat_template_hash=chat_template_hash(getattr(tokenizer, "chat_template", None)),
        datanet_id=source.datanet_id,
        snapshot_id=source.snapshot_id,
        snapshot_root=source.snapshot_root,
        training_log_root=log.root,
        num_steps=len(log.steps),
        num_records=len(source.records),
        num_records_trained=len(log.record_counts()),
        metrics=metrics,
        created_at=time.time(),
        versions={
            "openledger": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    )
    write_manifest(folder, manifest)
    return Adapter.open(folder)


@functools.lru_cache(maxsize=8)
def _cached_hash(path: str, size: int, mtime: float) -> Hash32:
    return weights_hash(path)


def _base_hash(name: str) -> Hash32:
    folder = resolve_model(name).path
    files = sorted(folder.glob("*.safetensors"))
    stamp = sum(f.stat().st_size for f in files), max((f.stat().st_mtime for f in files), default=0)
    return _cached_hash(str(folder), *stamp)
