"""Contribution files: the rows of a ``.jsonl``, ``.csv`` or ``.parquet`` file, by suffix.

One reader for every place that takes a file of contributions (``openledger datanet
contribute``, the Studio's upload), so each accepts the same kinds and reads them the same
way. The rows are ready for :meth:`~openledger.data.Datanet.contribute`:

- **JSONL**: one JSON object per non-blank line (:func:`~openledger.data.read_jsonl`).
- **CSV**: a header row of field names, then one row per record (UTF-8, an optional BOM);
  an empty cell leaves its field unset. Every value is text.
- **Parquet**: columns named after the fields (needs ``openledger[data]``).

Provenance columns of an export (:data:`~openledger.data.io.PROVENANCE_COLUMNS`) and null
values are dropped, as :meth:`~openledger.data.Datanet.import_jsonl` drops them, so an
export can be contributed again elsewhere.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from openledger.exceptions import ConfigError, SchemaError

__all__ = ["CONTRIBUTION_SUFFIXES", "read_contribution_file", "read_csv_rows"]

CONTRIBUTION_SUFFIXES = (".jsonl", ".csv", ".parquet")
"""File kinds a contributions file may be, by suffix (any case)."""


def read_contribution_file(path: str | Path, *, name: str | None = None) -> list[dict[str, Any]]:
    """Read every row of a contributions file.

    Args:
        path: A ``.jsonl``, ``.csv`` or ``.parquet`` file.
        name: The name errors give the file (default: ``path``); for a file received under
            another name, such as an upload kept in a temporary file.

    Raises:
        ConfigError: Another suffix, or a file without rows.
        SchemaError: Text that is not UTF-8, JSON or CSV (naming the line), a JSONL line
            that is not an object, or a file Parquet cannot read.
        MissingDependencyError: A Parquet file without ``pyarrow`` installed.
    """
    from openledger.data.convert import read_jsonl
    from openledger.data.io import PROVENANCE_COLUMNS, iter_parquet_rows

    path = Path(path)
    shown = name or str(path)
    suffix = path.suffix.lower()
    if suffix not in CONTRIBUTION_SUFFIXES:
        kinds = ", ".join(CONTRIBUTION_SUFFIXES)
        raise ConfigError(f"{shown}: give a {kinds} file, not {suffix or 'no suffix'}")
    try:
        if suffix == ".jsonl":
            raw = list(read_jsonl(path))
        elif suffix == ".csv":
            raw = read_csv_rows(path)
        else:
            raw = _parquet_rows(path, iter_parquet_rows)
    except SchemaError as exc:
        # NOTE: the readers name the path they read; the caller knows the file by `shown`
        raise SchemaError(str(exc).replace(str(path), shown)) from None
    rows = [
        {k: v for k, v in r.items() if k not in PROVENANCE_COLUMNS and v is not None} for r in raw
    ]
    if not rows:
        raise ConfigError(f"{shown} holds no rows")
    return rows


def read_csv_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a CSV file with a header row into one dict per row; empty cells are left out.

    Raises:
        SchemaError: Not UTF-8, not valid CSV, or a row with more cells than the header.
    """
    body = Path(path).read_bytes()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path} is not valid UTF-8 ({exc.reason})") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        rows = []
        for row in reader:
            if None in row:
                raise SchemaError(f"{path}:{reader.line_num} has more cells than the header")
            rows.append({key: value for key, value in row.items() if value not in (None, "")})
    except csv.Error as exc:
        raise SchemaError(f"{path} is not valid CSV: {exc}") from None
    return rows


def _parquet_rows(path: Path, reader: Any) -> list[dict[str, Any]]:
    from openledger.exceptions import MissingDependencyError

    try:
        return list(reader(path))
    except MissingDependencyError:
        raise
    except Exception as exc:  # NOTE: pyarrow's own errors (ArrowInvalid, OSError ...)
        raise SchemaError(f"{path} is not a readable Parquet file: {exc}") from None
