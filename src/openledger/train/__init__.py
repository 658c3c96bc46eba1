"""Model Factory: LoRA fine-tuning on datanet snapshots, exporting attributable adapters.

Quick tour::

    import openledger as ol
    recipe = ol.train.LoraRecipe(base_model="smollm2-135m-instruct", r=8, epochs=1)
    run = ol.train.finetune(recipe, snapshot, "out/medqa")
    run.adapter.id                      # keccak256 of adapter_model.safetensors
    run.adapter.manifest.training_log_root
    report = ol.train.evaluate(run.adapter, held_out)

Training runs on transformers' ``Trainer`` with PEFT; each optimizer step's record hashes
are logged and committed to a Merkle root stored in ``openledger_manifest.json``. The
formats are specified in docs/train.md.
"""

from __future__ import annotations

from openledger.train.evaluate import EvalReport, Sample, evaluate, rouge_l
from openledger.train.export import (
    ADAPTER_WEIGHTS_FILE,
    MANIFEST_FILE,
    Adapter,
    AdapterManifest,
    adapter_id,
    merge_and_save,
    weights_hash,
)
from openledger.train.finetune import TrainingRun, finetune
from openledger.train.formatting import IGNORE_INDEX, check_eos, format_record, record_messages
from openledger.train.provenance import (
    TRAINING_LOG_FILE,
    TRAINING_LOG_LEAF_ENCODING,
    StepRecord,
    TrainingLog,
    step_commitment,
    verify_step,
)
from openledger.train.recipe import LoraRecipe
from openledger.train.sources import TrainingData, load_training_data

__all__ = [
    "ADAPTER_WEIGHTS_FILE",
    "IGNORE_INDEX",
    "MANIFEST_FILE",
    "TRAINING_LOG_FILE",
    "TRAINING_LOG_LEAF_ENCODING",
    "Adapter",
    "AdapterManifest",
    "EvalReport",
    "LoraRecipe",
    "Sample",
    "StepRecord",
    "TrainingData",
    "TrainingLog",
    "TrainingRun",
    "adapter_id",
    "check_eos",
    "evaluate",
    "finetune",
    "format_record",
    "load_training_data",
    "merge_and_save",
    "record_messages",
    "rouge_l",
    "step_commitment",
    "verify_step",
    "weights_hash",
]
