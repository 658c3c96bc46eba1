"""The embedded SQLite store behind a datanet.

One file per datanet, in WAL mode: many processes may read while one writes, and every
contribution is a single ``BEGIN IMMEDIATE`` transaction, so a crash leaves all of it or
none. Commits are fsync'd (``synchronous=FULL``) unless the caller asks for less. Schema
changes are numbered migrations tracked in ``PRAGMA user_version``, applied together in one
immediate transaction. The folder is created 0700 and the file 0600.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from openledger.data.store_api import DatanetStore
from openledger.exceptions import ConfigError, StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "STORE_FILE", "Durability", "Store", "openable_version"]

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
    # 3: owner-signed validators, contribution deadlines, and commitments of
    # (record hash, contributor) made before the records are revealed.
    """
    ALTER TABLE validators ADD COLUMN signature BLOB;
    ALTER TABLE contributions ADD COLUMN deadline INTEGER;
    CREATE TABLE commitments (
        id INTEGER PRIMARY KEY,
        commitment BLOB NOT NULL UNIQUE,
        contributor TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX commitments_contributor ON commitments (contributor);
    """,
)
"""Numbered schema migrations; migration ``i`` moves ``user_version`` from ``i`` to ``i+1``."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The store layout this version of openledger writes."""


Durability = Literal["full", "normal"]
"""How hard a commit waits for the disk: ``"full"`` (default) or ``"normal"``."""

_SYNCHRONOUS: dict[str, str] = {"full": "FULL", "normal": "NORMAL"}
_FILE_MODE = 0o600
_FOLDER_MODE = 0o700


class Store(DatanetStore):
    """A connection to one datanet's SQLite file (the embedded default store).

    Args:
        path: The datanet folder.
        create: Create the file (and folder) if missing; otherwise it must exist.
        durability: ``"full"`` (default): a commit returns once the write-ahead log is
            fsync'd, so a receipt or a snapshot root, once handed out, survives a power
            loss. ``"normal"``: faster; a process crash loses nothing, but a power loss may
            roll back the last commits.

    Raises:
        StoreError: If the folder holds no datanet (and ``create`` is false), the file is
            unusable, or it was written by a newer openledger.
        ConfigError: For an unknown ``durability``.
    """

    conn: sqlite3.Connection

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        durability: Durability = "full",
    ) -> None:
        if durability not in _SYNCHRONOUS:
            raise ConfigError(f"durability must be 'full' or 'normal', got {durability!r}")
        folder = Path(path)
        self.file = folder / STORE_FILE
        self.location = str(folder)
        if create:
            _make_private(folder, self.file)
        elif not self.file.is_file():
            raise StoreError(f"{folder} is not a datanet (no {STORE_FILE}); use Datanet.create")
        try:
            # NOTE: a handle may move between threads (a service runs each request in a
            # worker thread, one at a time per handle); it is still never shared at once.
            self.conn = sqlite3.connect(
                self.file, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.file} is not a usable datanet store: {exc}") from exc

    def _version(self) -> int:
        return openable_version(self.conn.execute("PRAGMA user_version").fetchone()[0], self.file)

    def _migrate(self) -> None:
        # NOTE: the first read only skips the write lock when nothing is to do; the version
        # that decides is read again inside the transaction, so two processes upgrading
        # the same file at once apply each migration exactly once.
        if self._version() == SCHEMA_VERSION:
            return
        with self.write():
            for number in range(self._version(), SCHEMA_VERSION):
                for statement in _split(MIGRATIONS[number]):
                    self.conn.execute(statement)
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction.

        Any error rolls it back. SQLite errors, a failed ``COMMIT`` included (disk full,
        I/O error, a deferred constraint), come out as :class:`StoreError` with nothing of
        the block stored; other errors propagate unchanged.

        Raises:
            StoreError: If the transaction cannot start, a statement fails in SQLite, or
                the commit fails.
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a write on {self.file}: {exc}") from exc
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"the write to {self.file} failed and was rolled back: {exc}") from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        # NOTE: SQLite may already have rolled back on its own (e.g. after SQLITE_FULL).
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one read transaction (a consistent view across statements)."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def openable_version(version: int, location: object) -> int:
    """Return a stored layout version this openledger can open.

    Raises:
        StoreError: If a newer openledger wrote it.
    """
    number = int(version)
    if number > SCHEMA_VERSION:
        raise StoreError(
            f"{location} has store version {number}, newer than this openledger's "
            f"{SCHEMA_VERSION}; upgrade openledger to open it"
        )
    return number


def _make_private(folder: Path, file: Path) -> None:
    """Create the folder (0700) and an empty store file (0600) readable by the owner only.

    SQLite creates the ``-wal`` and ``-shm`` files with the permissions of the main file.
    """
    folder.mkdir(mode=_FOLDER_MODE, parents=True, exist_ok=True)
    os.chmod(folder, _FOLDER_MODE)
    descriptor = os.open(file, os.O_CREAT | os.O_RDWR, _FILE_MODE)
    os.close(descriptor)
    os.chmod(file, _FILE_MODE)


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
