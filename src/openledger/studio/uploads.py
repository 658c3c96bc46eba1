"""Contributions files from the browser: JSONL, CSV or Parquet bytes to rows, size-capped.

The rows go to :meth:`openledger.data.Datanet.contribute` in one call, so a file with one
bad row stores nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from openledger.data.contribution_files import CONTRIBUTION_SUFFIXES
from openledger.exceptions import ConfigError

__all__ = ["SUFFIXES", "read_capped", "rows_of"]

SUFFIXES = CONTRIBUTION_SUFFIXES
"""File kinds the Datanets tab accepts (what :func:`openledger.data.read_contribution_file`
reads)."""


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
    """Parse an uploaded ``.jsonl``, ``.csv`` or ``.parquet`` contributions file into rows,
    with the SDK's reader (:func:`openledger.data.read_contribution_file`, what
    ``openledger datanet contribute`` reads files with).

    Raises:
        ConfigError: Another file kind, or an empty file.
        SchemaError: Text that is not UTF-8, JSON or CSV, naming the line; an unreadable
            Parquet file.
    """
    from openledger.data import read_contribution_file

    suffix = Path(filename).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="openledger-upload-") as folder:
        # NOTE: the upload's own suffix (a path part cannot hold a separator), inside a
        # folder of our own; the reader refuses the kinds it does not read
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(body)
        return read_contribution_file(path, name=filename)
