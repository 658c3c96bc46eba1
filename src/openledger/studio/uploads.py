"""Contributions files from the browser: JSONL or CSV bytes to rows, size-capped.

The rows go to :meth:`openledger.data.Datanet.contribute` in one call, so a file with one
bad row stores nothing.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from openledger.exceptions import ConfigError, SchemaError

__all__ = ["SUFFIXES", "read_capped", "rows_of"]

SUFFIXES = (".jsonl", ".csv")
"""File kinds the Datanets tab accepts."""


async def read_capped(chunks: AsyncIterator[bytes], limit: int, filename: str) -> bytes:
    """Read a request body, refusing it as soon as it passes ``limit`` bytes.

    Raises:
        ConfigError: The body is larger than ``limit``.
    """
    body = bytearray()
    async for chunk in chunks:
        body.extend(chunk)
        if len(body) > limit:
            raise ConfigError(
                f"{filename} is larger than the {limit:,} bytes a contributions file may "
                "have; split it into smaller files"
            )
    return bytes(body)


def rows_of(filename: str, body: bytes) -> list[dict[str, Any]]:
    """Parse a ``.jsonl`` or ``.csv`` contributions file into rows of fields.

    CSV cells that are empty are left out (an optional field stays unset).

    Raises:
        ConfigError: Another file kind, or an empty file.
        SchemaError: Text that is not UTF-8, JSON or CSV, naming the line.
    """
    suffix = Path(filename).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{filename}: give a .jsonl or .csv file, not {suffix or 'no suffix'}")
    rows = _jsonl_rows(filename, body) if suffix == ".jsonl" else _csv_rows(filename, body)
    if not rows:
        raise ConfigError(f"{filename} holds no rows")
    return rows


def _jsonl_rows(filename: str, body: bytes) -> list[dict[str, Any]]:
    from openledger.data import read_jsonl

    with tempfile.TemporaryDirectory(prefix="openledger-upload-") as folder:
        path = Path(folder) / "upload.jsonl"
        path.write_bytes(body)
        try:
            return list(read_jsonl(path))
        except SchemaError as exc:
            # NOTE: the message names the temporary file; the user knows the upload's name.
            raise SchemaError(str(exc).replace(str(path), filename)) from None


def _csv_rows(filename: str, body: bytes) -> list[dict[str, Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{filename} is not valid UTF-8 ({exc.reason})") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        rows = [_csv_row(filename, reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise SchemaError(f"{filename} is not valid CSV: {exc}") from None
    return rows


def _csv_row(filename: str, line: int, row: dict[str | Any, Any]) -> dict[str, Any]:
    if None in row:
        raise SchemaError(f"{filename}:{line} has more cells than the header has columns")
    return {key: value for key, value in row.items() if value not in (None, "")}
