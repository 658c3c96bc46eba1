"""Checks of an influence index's inputs: its settings, its snapshot, its file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openledger.attribution.influence import METHODS
from openledger.data import Snapshot
from openledger.exceptions import AttributionInputError, SnapshotMismatchError

if TYPE_CHECKING:
    from openledger.attribution.index import IndexManifest
    from openledger.train import Adapter

__all__ = [
    "check_batch_tokens",
    "check_dtypes",
    "check_index_snapshot",
    "check_settings",
    "check_snapshot",
    "read_manifest",
]


def read_manifest(root: Path, file: str, formats: Sequence[str]) -> IndexManifest:
    """Read and validate ``root/file``; refuse a format not in ``formats`` with a clear
    error."""
    from openledger.attribution.index import IndexManifest

    try:
        raw = json.loads((root / file).read_text())
        if isinstance(raw, dict) and raw.get("format") not in formats:
            readable = " or ".join(map(repr, formats))
            raise ValueError(f"format {raw.get('format')!r}, not {readable}; rebuild it")
        return IndexManifest.model_validate(raw)
    except (OSError, ValueError) as exc:
        raise AttributionInputError(f"{root} is not an influence index: {exc}") from None


def check_index_snapshot(manifest: IndexManifest, snapshot: Any) -> None:
    """Raise unless ``snapshot`` is the one the index was built on."""
    if not isinstance(snapshot, Snapshot):
        raise AttributionInputError(
            f"snapshot must be an openledger.data.Snapshot, got {type(snapshot).__name__}"
        )
    if snapshot.root != manifest.snapshot_root:
        raise SnapshotMismatchError(
            f"the index was built on snapshot root {manifest.snapshot_root}, not "
            f"{snapshot.root}; pass the snapshot it was built on"
        )


def check_snapshot(adapter: Adapter, snapshot: Any) -> None:
    """Raise unless ``snapshot`` is the one the adapter was trained on."""
    if not isinstance(snapshot, Snapshot):
        raise AttributionInputError(
            f"snapshot must be an openledger.data.Snapshot, got {type(snapshot).__name__}"
        )
    named = adapter.manifest.snapshot_root
    if named != snapshot.root:
        raise SnapshotMismatchError(
            f"adapter {adapter.id} was trained on snapshot root {named}, but snapshot "
            f"{snapshot.id} has root {snapshot.root}; attribute against the snapshot it was "
            "trained on"
        )


def check_settings(
    method: str,
    projection_dim: int | None,
    damping_scale: float,
    checkpoints: Sequence[Any],
    learning_rates: Sequence[float] | None,
) -> None:
    """Raise on an unknown method or settings that do not fit it."""
    if method not in METHODS:
        raise AttributionInputError(f"method {method!r} is unknown; use one of {METHODS}")
    if projection_dim is not None and projection_dim < 1:
        raise AttributionInputError(f"projection_dim must be >= 1 or None, got {projection_dim}")
    if not damping_scale > 0:
        raise AttributionInputError(f"damping_scale must be > 0, got {damping_scale}")
    if checkpoints and method != "tracin":
        raise AttributionInputError("checkpoints are used by method='tracin' only")
    if learning_rates is not None and len(learning_rates) != max(1, len(checkpoints)):
        raise AttributionInputError("give one learning rate per checkpoint")


def check_batch_tokens(batch_tokens: Any) -> None:
    """Raise unless ``batch_tokens`` is an int >= 1."""
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise AttributionInputError(f"batch_tokens must be an int >= 1, got {batch_tokens!r}")


def check_dtypes(compute_dtype: Any, storage_dtype: Any) -> None:
    """Raise unless both dtypes are known (:data:`~.batched.COMPUTE_DTYPES`,
    :data:`~.storage.STORAGE_DTYPES`)."""
    from openledger.attribution.batched import COMPUTE_DTYPES
    from openledger.attribution.storage import check_storage_dtype

    if compute_dtype not in COMPUTE_DTYPES:
        raise AttributionInputError(
            f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}"
        )
    check_storage_dtype(storage_dtype)
