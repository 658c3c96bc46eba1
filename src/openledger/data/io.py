"""Exports (JSONL, Parquet, Hugging Face ``datasets``) and bulk imports.

Exported rows are the record's canonical fields plus two provenance columns,
``_record_hash`` and ``_contributor`` (leading underscores cannot clash with schema fields;
imports drop them). Parquet and ``datasets`` are optional: install ``openledger[data]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openledger.crypto import Account
from openledger.data.canonical import canonical_fields
from openledger.data.convert import read_jsonl
from openledger.data.receipts import ContributionReceipt, StoredRecord
from openledger.exceptions import ConfigError, MissingDependencyError, SchemaError

if TYPE_CHECKING:
    from openledger.data.datanet import Datanet

__all__ = [
    "PROVENANCE_COLUMNS",
    "export_rows",
    "import_rows",
    "iter_hf_rows",
    "iter_parquet_rows",
    "write_hf_dataset",
    "write_jsonl",
    "write_parquet",
]

PROVENANCE_COLUMNS = ("_record_hash", "_contributor")
"""Columns added to exported rows and dropped on import."""


def _require(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise MissingDependencyError(
            f"{module} is needed for this; install it with `pip install 'openledger[data]'`"
        ) from None


def export_rows(
    records: Iterable[StoredRecord], *, provenance: bool = True
) -> Iterator[dict[str, Any]]:
    """Yield one plain dict per record (canonical fields, plus provenance columns)."""
    for stored in records:
        row = canonical_fields(stored.record)
        if provenance:
            row["_record_hash"] = stored.record_hash
            row["_contributor"] = stored.contributor
        yield row


def _rectangular(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row every column (``None`` where absent): columnar writers infer the
    columns from the first row and would silently drop later optional fields."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return [{key: row.get(key) for key in columns} for row in rows]


def write_jsonl(
    records: Iterable[StoredRecord], path: str | Path, *, provenance: bool = True
) -> int:
    """Write records as UTF-8 JSONL; return how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in export_rows(records, provenance=provenance):
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


def write_parquet(
    records: Iterable[StoredRecord], path: str | Path, *, provenance: bool = True
) -> int:
    """Write records to a Parquet file; return how many were written."""
    pa = _require("pyarrow")
    pq = _require("pyarrow.parquet")
    rows = _rectangular(list(export_rows(records, provenance=provenance)))
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return len(rows)


def write_hf_dataset(records: Iterable[StoredRecord], *, provenance: bool = True) -> Any:
    """Return the records as a Hugging Face ``datasets.Dataset``."""
    datasets = _require("datasets")
    return datasets.Dataset.from_list(
        _rectangular(list(export_rows(records, provenance=provenance)))
    )


def iter_parquet_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield rows of a Parquet file as dicts, batch by batch."""
    pq = _require("pyarrow.parquet")
    for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=10_000):
        yield from batch.to_pylist()


def iter_hf_rows(dataset: Any) -> Iterator[dict[str, Any]]:
    """Yield rows of a ``datasets.Dataset`` (or any iterable of dicts)."""
    for row in dataset:
        yield dict(row)


def _clean(row: Any) -> Any:
    if isinstance(row, dict):
        return {k: v for k, v in row.items() if k not in PROVENANCE_COLUMNS and v is not None}
    return row


def import_rows(
    datanet: Datanet, rows: Iterable[Any], *, contributor: Account, batch_size: int = 10_000
) -> list[ContributionReceipt]:
    """Contribute rows in batches, each batch one signed contribution (one transaction).

    A failing batch raises and stores nothing of itself; earlier batches stay stored.

    Raises:
        SchemaError: Naming the batch and the record within it.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    receipts: list[ContributionReceipt] = []
    iterator = iter(rows)
    start = 0
    while chunk := [_clean(r) for r in islice(iterator, batch_size)]:
        try:
            receipts.extend(datanet.contribute(chunk, contributor=contributor))
        except SchemaError as exc:
            raise type(exc)(f"rows {start}..{start + len(chunk) - 1}: {exc}") from None
        start += len(chunk)
    return receipts


def jsonl_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the rows of a JSONL file (see :func:`openledger.data.convert.read_jsonl`)."""
    return read_jsonl(path)
