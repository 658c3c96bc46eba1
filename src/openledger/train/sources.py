"""Training data in: snapshots, datanets, exports and plain records, with their provenance.

Whatever the input, training sees a :class:`TrainingData`: a list of records, each with its
record hash (``keccak256`` of its canonical encoding, see docs/data.md) and contributor
where known, plus the datanet id and snapshot root when the data came from a snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openledger.crypto import keccak256
from openledger.data import (
    ChatRecord,
    ClassificationRecord,
    Datanet,
    InstructionRecord,
    Record,
    Snapshot,
    StoredRecord,
    TextRecord,
    read_jsonl,
    record_hash,
)
from openledger.exceptions import TrainDataError
from openledger.train.formatting import check_formattable
from openledger.types import Address, Hash32

if TYPE_CHECKING:
    from openledger.data import AccessGrant

__all__ = ["SourceRecord", "TrainingData", "load_training_data", "split_indices"]

_BY_FIELDS: list[tuple[frozenset[str], type[Record]]] = [
    (frozenset({"messages"}), ChatRecord),
    (frozenset({"instruction", "response"}), InstructionRecord),
    (frozenset({"instruction", "input", "response"}), InstructionRecord),
    (frozenset({"text", "label"}), ClassificationRecord),
    (frozenset({"text"}), TextRecord),
]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One training record and where it came from.

    Attributes:
        record: The validated record.
        record_hash: Its record hash.
        contributor: Its contributor, when the source says so.
    """

    record: Record
    record_hash: Hash32
    contributor: Address | None = None


@dataclass(frozen=True, slots=True)
class TrainingData:
    """Records to train on, with the snapshot they belong to (when known).

    Attributes:
        records: The records, in source order.
        datanet_id: The datanet's id, for snapshot and datanet inputs.
        snapshot_id: The snapshot number within its datanet.
        snapshot_root: The snapshot's Merkle root.
    """

    records: list[SourceRecord]
    datanet_id: Hash32 | None = None
    snapshot_id: int | None = None
    snapshot_root: Hash32 | None = None


def load_training_data(data: Any, *, grant: AccessGrant | None = None) -> TrainingData:
    """Read training data from any supported source.

    Args:
        data: A :class:`~openledger.data.Snapshot`; a :class:`~openledger.data.Datanet`
            (its latest snapshot); the path of a JSONL export; or an iterable of
            ``StoredRecord`` s, ``Record`` s or export rows (dicts, optionally with the
            ``_record_hash`` and ``_contributor`` provenance columns).
        grant: Access grant for a private datanet.

    Returns:
        The records with their hashes and provenance.

    Raises:
        TrainDataError: Empty data, an unformattable schema, or a row whose
            ``_record_hash`` does not match its fields.
        AccessDeniedError: A private datanet without a valid grant.
    """
    if isinstance(data, Datanet):
        latest = data.latest_snapshot()
        if latest is None:
            raise TrainDataError(
                f"datanet {data.name!r} has no snapshot to train on; call datanet.snapshot()"
            )
        data = latest
    if isinstance(data, Snapshot):
        records = [_from_stored(s) for s in data.records(grant=grant)]
        found = TrainingData(records, data.datanet_id, data.id, data.root)
    elif isinstance(data, (str, os.PathLike)):
        found = TrainingData([_from_row(r, i) for i, r in enumerate(_jsonl(Path(data)))])
    elif isinstance(data, Iterable) and not isinstance(data, (bytes, dict)):
        found = TrainingData([_from_item(item, i) for i, item in enumerate(data)])
    else:
        raise TrainDataError(
            f"cannot train on a {type(data).__name__}: pass a Snapshot, a Datanet, a JSONL "
            "export path or an iterable of records"
        )
    _check(found)
    return found


def _check(found: TrainingData) -> None:
    if not found.records:
        raise TrainDataError("the training data is empty: there is nothing to learn from")
    for schema in {type(s.record) for s in found.records}:
        check_formattable(schema)


def _jsonl(path: Path) -> Iterable[Any]:
    if not path.is_file():
        raise TrainDataError(f"{path} is not a file; pass a JSONL export or a snapshot")
    try:
        return list(read_jsonl(path))
    except (OSError, ValueError) as exc:
        raise TrainDataError(f"cannot read {path} as JSONL: {exc}") from None


def _from_stored(stored: StoredRecord) -> SourceRecord:
    return SourceRecord(stored.record, stored.record_hash, stored.contributor)


def _from_item(item: Any, index: int) -> SourceRecord:
    if isinstance(item, StoredRecord):
        return _from_stored(item)
    if isinstance(item, Record):
        return SourceRecord(item, record_hash(item))
    if isinstance(item, dict):
        return _from_row(item, index)
    raise TrainDataError(
        f"item {index} is a {type(item).__name__}; expected a StoredRecord, Record or dict row"
    )


def _from_row(row: Any, index: int) -> SourceRecord:
    if not isinstance(row, dict):
        raise TrainDataError(f"row {index} is a {type(row).__name__}, not a JSON object")
    fields = {k: v for k, v in row.items() if not k.startswith("_") and v is not None}
    schema = next((s for keys, s in _BY_FIELDS if keys == set(fields)), None)
    if schema is None:
        raise TrainDataError(
            f"row {index} has fields {sorted(fields)}, which match no built-in schema "
            "(instruction/response, messages, text/label, text); pass Record instances"
        )
    try:
        record = schema.model_validate(fields)
    except ValueError as exc:
        raise TrainDataError(f"row {index} does not fit {schema.__name__}: {exc}") from None
    digest = record_hash(record)
    stated = row.get("_record_hash")
    if stated is not None and str(stated).lower() != digest:
        raise TrainDataError(
            f"row {index}: _record_hash {stated} does not match its fields (hash {digest}); "
            "the export was altered"
        )
    contributor = row.get("_contributor")
    return SourceRecord(record, digest, Address(contributor) if contributor else None)


def split_indices(data: TrainingData, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split record indices into (train, eval), deterministically from the record hashes.

    Each record's key is ``keccak256(seed as 32 bytes || record hash)``; the records with
    the smallest keys are held out, so the split does not depend on the input order and
    a record stays on its side when others are added.

    Returns:
        Train and eval indices, each in source order. ``fraction == 0`` holds out nothing;
        otherwise at least one record is held out and at least one kept.

    Raises:
        TrainDataError: If a split is asked for with fewer than two records.
    """
    count = len(data.records)
    if fraction <= 0:
        return list(range(count)), []
    if count < 2:
        raise TrainDataError("eval_split needs at least two records; set eval_split to 0")
    held = min(count - 1, max(1, round(fraction * count)))
    salt = seed.to_bytes(32, "big")
    keys = [keccak256(salt + bytes.fromhex(s.record_hash[2:])) for s in data.records]
    held_out = set(sorted(range(count), key=keys.__getitem__)[:held])
    train = [i for i in range(count) if i not in held_out]
    return train, sorted(held_out)
