"""Adapter folders: PEFT files plus ``openledger_manifest.json``, and merged models.

An adapter folder holds what plain PEFT reads (``adapter_config.json``,
``adapter_model.safetensors``), the training log (``training_log.json``) and the manifest.
The adapter id is ``keccak256`` of the bytes of ``adapter_model.safetensors``; the base
model's weights hash is ``keccak256`` of its single ``*.safetensors`` file, or, for a
sharded checkpoint, ``keccak256`` of the concatenated per-file hashes in file-name order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from openledger.crypto import keccak256, keccak256_hex
from openledger.exceptions import ManifestError
from openledger.models import load_base_model
from openledger.train.provenance import TRAINING_LOG_FILE, TrainingLog
from openledger.train.recipe import LoraRecipe
from openledger.types import Hash32

if TYPE_CHECKING:
    import torch

    from openledger.chain import ModelManifest

__all__ = [
    "ADAPTER_WEIGHTS_FILE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "Adapter",
    "AdapterManifest",
    "adapter_id",
    "merge_and_save",
    "weights_hash",
]

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
"""The adapter weights file of a PEFT folder; the adapter id is keccak256 of its bytes."""
MANIFEST_FILE = "openledger_manifest.json"
"""The adapter manifest beside the PEFT files: which data and recipe made the adapter."""
MANIFEST_FORMAT = "openledger.adapter_manifest/1"
_CHUNK = 1 << 24


class AdapterManifest(BaseModel):
    """What an adapter is, what it was trained from, and how (``openledger_manifest.json``).

    Attributes:
        format: ``"openledger.adapter_manifest/1"``.
        adapter_id: keccak256 of ``adapter_model.safetensors``.
        base_model: The recipe's base model name.
        base_model_weights_hash: Hash of the base weights (see the module docstring).
        recipe: The recipe fields.
        recipe_hash: :attr:`LoraRecipe.hash`.
        chat_template_hash: keccak256 of the UTF-8 chat template used (``None`` if none).
        datanet_id: The datanet trained on (``None`` for data not from a snapshot).
        snapshot_id: Its snapshot number.
        snapshot_root: Its snapshot Merkle root.
        training_log_root: Root of the training log (see :mod:`.provenance`).
        num_steps: Optimizer steps taken.
        num_records: Records in the data, and ``num_records_trained`` of those fed at least once.
        metrics: Final metrics (losses, perplexity, throughput).
        created_at: Unix time of export.
        versions: Library versions (openledger, torch, transformers, peft).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = MANIFEST_FORMAT
    adapter_id: Hash32
    base_model: str
    base_model_weights_hash: Hash32
    recipe: dict[str, Any]
    recipe_hash: Hash32
    chat_template_hash: Hash32 | None
    datanet_id: Hash32 | None
    snapshot_id: int | None
    snapshot_root: Hash32 | None
    training_log_root: Hash32
    num_steps: int
    num_records: int
    num_records_trained: int
    metrics: dict[str, float]
    created_at: float
    versions: dict[str, str]


def _file_hash(path: Path) -> bytes:
    from Crypto.Hash import keccak

    digest = keccak.new(digest_bits=256)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def adapter_id(folder: str | os.PathLike[str]) -> Hash32:
    """Return keccak256 of the folder's ``adapter_model.safetensors``.

    Raises:
        ManifestError: If the weights file is missing.
    """
    weights = Path(folder) / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        raise ManifestError(f"{folder} has no {ADAPTER_WEIGHTS_FILE}; is it an adapter folder?")
    return Hash32("0x" + _file_hash(weights).hex())


def weights_hash(folder: str | os.PathLike[str]) -> Hash32:
    """Return the weights hash of a Hugging Face model folder (see the module docstring).

    Raises:
        ManifestError: If the folder holds no ``*.safetensors`` file.
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ManifestError(f"{folder} holds no .safetensors weights to hash")
    if len(files) == 1:
        return Hash32("0x" + _file_hash(files[0]).hex())
    return keccak256_hex(b"".join(_file_hash(f) for f in files))


@dataclass(frozen=True)
class Adapter:
    """An exported adapter folder with its verified manifest.

    Attributes:
        path: The folder.
        manifest: Its manifest.
    """

    path: Path
    manifest: AdapterManifest

    @property
    def id(self) -> Hash32:
        """The adapter id (keccak256 of the weights file)."""
        return self.manifest.adapter_id

    @property
    def recipe(self) -> LoraRecipe:
        """The recipe it was trained with."""
        return LoraRecipe.from_dict(self.manifest.recipe)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Adapter:
        """Read an adapter folder's manifest and (by default) check it against the files.

        Raises:
            ManifestError: If the manifest is missing or malformed, the adapter id does not
                recompute from the weights, or the training-log root from the log.
        """
        folder = Path(path)
        try:
            body = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
            manifest = AdapterManifest.model_validate(body)
        except (OSError, ValueError, ValidationError) as exc:
            raise ManifestError(f"{folder / MANIFEST_FILE} is missing or invalid: {exc}") from None
        adapter = cls(folder, manifest)
        if verify:
            adapter.verify()
        return adapter

    def verify(self) -> None:
        """Recompute the adapter id and the training-log root from the files.

        Raises:
            ManifestError: On any mismatch.
        """
        if adapter_id(self.path) != self.manifest.adapter_id:
            raise ManifestError(
                f"{self.path}: adapter_model.safetensors does not hash to the manifest's "
                f"adapter_id {self.manifest.adapter_id}; the weights were changed"
            )
        if self.training_log().root != self.manifest.training_log_root:
            raise ManifestError(f"{self.path}: the training log does not match its manifest root")

    def model_manifest(self) -> ModelManifest:
        """The on-chain manifest of this adapter; with its registrant it names the model.

        Weights hash = the adapter id, the base model and recipe hash of the manifest, the
        snapshot root trained on (if any) and the training-log root, so
        ``protocol.models.register_model(adapter.model_manifest())`` registers exactly what
        this folder holds and :func:`openledger.chain.model_id` (manifest, registrant) names it.
        """
        from openledger.chain import ModelManifest

        found = self.manifest
        roots = () if found.snapshot_root is None else (found.snapshot_root,)
        return ModelManifest(
            adapter_weights_hash=found.adapter_id,
            base_model=found.base_model,
            recipe_hash=found.recipe_hash,
            datanet_roots=roots,
            training_log_root=found.training_log_root,
        )

    def training_log(self) -> TrainingLog:
        """Read the adapter's training log."""
        return TrainingLog.load(self.path / TRAINING_LOG_FILE)

    def load(
        self,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[Any, Any]:
        """Load the base model with this adapter applied, as a PEFT model in eval mode.

        Returns:
            ``(peft_model, tokenizer)``.
        """
        from peft import PeftModel

        base, tokenizer = load_base_model(self.manifest.base_model, dtype=dtype, device=device)
        if self.recipe.chat_template is not None:
            tokenizer.chat_template = self.recipe.chat_template
        model = PeftModel.from_pretrained(base, str(self.path))
        model.eval()
        return model, tokenizer


def write_manifest(folder: Path, manifest: AdapterManifest) -> Path:
    """Write ``openledger_manifest.json`` into ``folder``."""
    target = folder / MANIFEST_FILE
    body = manifest.model_dump(mode="json")
    target.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def merge_and_save(
    adapter: Adapter | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Write a full model with the adapter merged into the base weights.

    The folder loads with plain ``transformers`` ``from_pretrained`` and holds the
    tokenizer and ``openledger_merge.json`` (adapter id and base weights hash).

    Returns:
        The output folder.
    """
    found = adapter if isinstance(adapter, Adapter) else Adapter.open(adapter)
    model, tokenizer = found.load(dtype=dtype, device="cpu")
    merged = model.merge_and_unload()
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    note = {
        "format": "openledger.merged_model/1",
        "adapter_id": found.id,
        "base_model": found.manifest.base_model,
        "base_model_weights_hash": found.manifest.base_model_weights_hash,
        "merged_weights_hash": weights_hash(folder),
    }
    (folder / "openledger_merge.json").write_text(json.dumps(note, indent=2) + "\n")
    return folder


def chat_template_hash(template: str | None) -> Hash32 | None:
    """Return keccak256 of a chat template's UTF-8 text, or ``None`` without one."""
    return None if not template else Hash32("0x" + keccak256(template.encode()).hex())
