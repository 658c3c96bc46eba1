"""The folders a merge reads and writes: the sources' weights, manifests and configs; the
merged adapter's ``adapter_config.json`` and ``openledger_manifest.json``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from openledger.crypto import keccak256_hex
from openledger.exceptions import AdapterFormatError, AdapterMismatchError, ConfigError
from openledger.serve.adapters.loading import MANIFEST_FILE, WEIGHTS_FILE, AdapterSpec
from openledger.serve.adapters.sources import ADAPTER_CONFIG_FILE

__all__ = [
    "MERGED_MANIFEST_FORMAT",
    "MergeSource",
    "common_base",
    "output_folder",
    "read_tensors",
    "write_config",
    "write_manifest",
]

MERGED_MANIFEST_FORMAT = "openledger.merged_adapter/1"


@dataclass(frozen=True, slots=True)
class MergeSource:
    """One adapter going into a merge.

    Attributes:
        spec: The registered adapter.
        weight: Its coefficient.
    """

    spec: AdapterSpec
    weight: float


def output_folder(output_dir: str | os.PathLike[str]) -> Path:
    """``output_dir``, which must be new or an empty folder.

    Raises:
        ConfigError: It exists and is not an empty folder.
    """
    folder = Path(output_dir)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} exists and is not an empty folder; pick a new output_dir")
    return folder


def read_tensors(spec: AdapterSpec) -> dict[str, torch.Tensor]:
    """A source's tensors.

    Raises:
        AdapterFormatError: Its weights file became unreadable.
    """
    path = spec.folder / WEIGHTS_FILE
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{path} is not a readable safetensors file: {exc}") from exc


def common_base(sources: Sequence[MergeSource]) -> dict[str, Any]:
    """The base model the sources' manifests agree on (None fields when they have none)."""
    manifests = [_manifest(s.spec.folder) for s in sources]
    hashes = {m["base_model_weights_hash"] for m in manifests if m.get("base_model_weights_hash")}
    if len(hashes) > 1:
        raise AdapterMismatchError(
            f"the adapters were trained on different base weights ({sorted(hashes)}); "
            "only adapters of one base model can be merged"
        )
    names = [m["base_model"] for m in manifests if m.get("base_model")]
    config = _config(sources[0].spec.folder)
    return {
        "base_model": names[0] if names else config.get("base_model_name_or_path"),
        "base_model_weights_hash": hashes.pop() if hashes else None,
    }


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _config(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def write_config(folder: Path, sources: Sequence[MergeSource], ranks: Mapping[str, int]) -> None:
    """The first source's config with the merged rank, alpha = rank and the union of targets.

    Modules whose rank differs from the largest get ``rank_pattern``/``alpha_pattern``
    entries (scaling 1 everywhere); untargeted layers of a targeted projection start at
    zero (``init_lora_weights=True``), so PEFT loads the folder as written.
    """
    config = _config(sources[0].spec.folder)
    rank = max(ranks.values())
    odd = {module: r for module, r in ranks.items() if r != rank}
    config.update(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted({t for s in sources for t in s.spec.target_modules}),
        rank_pattern=odd,
        alpha_pattern=dict(odd),
        use_rslora=False,
        use_dora=False,
        init_lora_weights=True,
        layers_to_transform=None,
        layers_pattern=None,
        modules_to_save=None,
    )
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    (folder / ADAPTER_CONFIG_FILE).write_text(text, encoding="utf-8")


def write_manifest(
    folder: Path,
    sources: Sequence[MergeSource],
    combination: str,
    options: Mapping[str, object],
    base: Mapping[str, Any],
) -> None:
    """``openledger_manifest.json`` of a merged folder: its id, sources and settings."""
    weights_bytes = (folder / WEIGHTS_FILE).read_bytes()
    manifest = {
        "format": MERGED_MANIFEST_FORMAT,
        "adapter_id": keccak256_hex(weights_bytes),
        **base,
        "combination": combination,
        **({k: v for k, v in options.items() if k == "seed"} if "dare" in combination else {}),
        "density": options["density"],
        "majority_sign_method": options["majority_sign_method"] if "ties" in combination else None,
        "sources": [
            {
                "name": s.spec.name,
                "adapter_id": s.spec.adapter_id,
                "weight": s.weight,
                "ranks": sorted(set(s.spec.ranks.values())),
            }
            for s in sources
        ],
        "created_at": time.time(),
        "versions": {"torch": torch.__version__},
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (folder / MANIFEST_FILE).write_text(text, encoding="utf-8")
