"""The embedded SQLite store behind a datanet.

One file per datanet, in WAL mode: many processes may read while one writes, and every
contribution is a single ``BEGIN IMMEDIATE`` transaction, so a crash leaves all of it or
none. Schema changes are numbered migrations tracked in ``PRAGMA user_version``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openledger.exceptions import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "STORE_FILE", "Store"]

STORE_FILE = "datanet.sqlite"
"""Name of the SQLite file inside a datanet folder."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial layout.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE contributions (
        id INTEGER PRIMARY KEY,
        contributor TEXT NOT NULL,
        nonce INTEGER NOT NULL,
        records_root BLOB NOT NULL,
        count INTEGER NOT NULL,
        signature BLOB NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (contributor, nonce)
    );
    CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        contributor TEXT NOT NULL,
        contribution_id INTEGER NOT NULL REFERENCES contributions (id),
        position INTEGER NOT NULL,
        payload BLOB NOT NULL,
        status TEXT NOT NULL DEFAULT 'accepted',
        minhash BLOB
    );
    CREATE INDEX records_contributor ON records (contributor);
    CREATE TABLE flags (
        record_id INTEGER NOT NULL REFERENCES records (id),
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX flags_record ON flags (record_id);
    CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        record_id INTEGER NOT NULL REFERENCES records (id),
        validator TEXT NOT NULL,
        accept INTEGER NOT NULL,
        reason TEXT NOT NULL,
        signature BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE validators (address TEXT PRIMARY KEY);
    CREATE TABLE access_requests (
        id INTEGER PRIMARY KEY,
        requester TEXT NOT NULL,
        purpose TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        created_at REAL NOT NULL,
        decided_at REAL
    );
    CREATE TABLE grants (
        request_id INTEGER PRIMARY KEY REFERENCES access_requests (id),
        grantee TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        signature BLOB NOT NULL
    );
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY,
        root BLOB NOT NULL,
        count INTEGER NOT NULL,
        created_at REAL NOT NULL,
        record_ids BLOB NOT NULL,
        leaves BLOB NOT NULL,
        manifest TEXT NOT NULL,
        manifest_hash BLOB NOT NULL
    );
    """,
    # 2: keep every signed record hash of a contribution, so an audit can recompute its
    # records root even when duplicates were skipped (older rows stay NULL).
    """
    ALTER TABLE contributions ADD COLUMN record_hashes BLOB;
    """,
)
"""Numbered schema migrations; migration ``i`` moves ``user_version`` from ``i`` to ``i+1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The store layout this version of openledger writes."""


class Store:
    """A connection to one datanet's SQLite file.

    Args:
        path: The datanet folder.
        create: Create the file (and folder) if missing; otherwise it must exist.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        folder = Path(path)
        self.file = folder / STORE_FILE
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not self.file.is_file():
            raise StoreError(f"{folder} is not a datanet (no {STORE_FILE}); use Datanet.create")
        try:
            self.conn = sqlite3.connect(self.file, isolation_level=None, timeout=30.0)
            self.conn.execute("PRAGMA journal_mode=WAL")
            # NOTE: NORMAL in WAL mode is safe against process crashes (SIGKILL); only an OS
            # crash or power loss may drop the last transactions, never corrupt the file.
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.file} is not a usable datanet store: {exc}") from exc

    def _migrate(self) -> None:
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.file} has store version {version}, newer than this openledger's "
                f"{SCHEMA_VERSION}; upgrade openledger to open it"
            )
        for number in range(version, SCHEMA_VERSION):
            with self.write():
                for statement in _split(MIGRATIONS[number]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={number + 1}")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction; roll back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one read transaction (a consistent view across statements)."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def get_meta(self) -> dict[str, str]:
        """Return every ``meta`` key and value."""
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
