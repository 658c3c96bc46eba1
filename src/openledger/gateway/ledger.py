"""The gateway's durable SQLite ledger: API keys and signed receipts.

Receipts are written one transaction each, in WAL mode with ``synchronous=FULL``: a
receipt is on disk (the log fsync'd) before :meth:`ReceiptLedger.record` returns, and so
before the response it meters is finished. The request id is the primary key, so a
receipt is recorded once, across restarts too. The file is created with mode 0600.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openledger.crypto import to_checksum_address
from openledger.exceptions import ConfigError, CryptoError, LedgerError
from openledger.gateway.keys import (
    ApiKey,
    KeyRole,
    default_payer,
    hash_api_key,
    key_id_of,
    new_api_key,
)
from openledger.gateway.receipts import SignedGatewayReceipt
from openledger.types import Hash32

__all__ = ["ReceiptLedger"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    payer TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS receipts (
    request_id TEXT PRIMARY KEY,
    payer TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_by_epoch ON receipts (epoch);
CREATE INDEX IF NOT EXISTS receipts_by_payer ON receipts (payer);
"""


class ReceiptLedger:
    """One SQLite file of API keys and signed gateway receipts.

    Safe to share between threads (one connection behind a lock); several processes may
    open the same file (SQLite's own locking).

    Args:
        path: The ledger file; created (mode 0600, folders 0700) when missing.

    Raises:
        LedgerError: The file is not a usable ledger, or was written by a newer version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        _make_private(self.path)
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a usable gateway ledger: {exc}") from exc

    def close(self) -> None:
        """Close the connection (everything recorded is already on disk)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReceiptLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def record(self, signed: SignedGatewayReceipt, *, finish_reason: str = "stop") -> None:
        """Write one receipt in its own fsync'd transaction.

        Raises:
            LedgerError: Its request id is recorded already (nothing is changed), or the
                write failed.
        """
        receipt = signed.receipt
        row = (
            receipt.request_id,
            receipt.payer,
            receipt.epoch,
            receipt.timestamp,
            receipt.prompt_tokens,
            receipt.completion_tokens,
            finish_reason,
            signed.to_json(),
        )
        try:
            with self._write() as conn:
                conn.execute("INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.IntegrityError:
            raise LedgerError(f"receipt {receipt.request_id} is recorded already") from None

    def receipt(self, request_id: str) -> SignedGatewayReceipt | None:
        """Return the receipt of ``request_id`` (``0x``-hex), or None."""
        rows = self._read("SELECT body FROM receipts WHERE request_id = ?", (request_id.lower(),))
        return SignedGatewayReceipt.model_validate_json(rows[0][0]) if rows else None

    def receipts(self, *, epoch: int | None = None) -> Iterator[SignedGatewayReceipt]:
        """Yield recorded receipts in the order they were written (of one epoch if given)."""
        if epoch is None:
            rows = self._read("SELECT body FROM receipts ORDER BY rowid", ())
        else:
            rows = self._read("SELECT body FROM receipts WHERE epoch = ? ORDER BY rowid", (epoch,))
        for (body,) in rows:
            yield SignedGatewayReceipt.model_validate_json(body)

    def count_receipts(self) -> int:
        """Return how many receipts are recorded."""
        return int(self._read("SELECT COUNT(*) FROM receipts", ())[0][0])

    def create_key(
        self, *, payer: str | None = None, role: KeyRole = "user", name: str = ""
    ) -> tuple[str, ApiKey]:
        """Create an API key; the key itself is returned once and stored only hashed.

        Args:
            payer: The account its requests are billed to; default an address derived
                from the key's hash.
            role: ``"user"`` or ``"admin"``.
            name: A label for listings.

        Returns:
            The key (show it to its owner now) and its stored record.

        Raises:
            ConfigError: A malformed payer address or an unknown role.
        """
        if role not in ("user", "admin"):
            raise ConfigError(f"role must be 'user' or 'admin', got {role!r}")
        key = new_api_key()
        key_hash = hash_api_key(key)
        try:
            account = to_checksum_address(payer, what="payer") if payer else default_payer(key_hash)
        except CryptoError as exc:
            raise ConfigError(str(exc)) from None
        record = ApiKey(key_id_of(key_hash), key_hash, account, role, name, int(time.time()))
        row = (key_hash, record.key_id, account, role, name, record.created_at)
        with self._write() as conn:
            conn.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL)", row)
        return key, record

    def find_key(self, key: str) -> ApiKey | None:
        """Return the live (not revoked) record of ``key``, or None."""
        rows = self._read(
            "SELECT key_id, key_hash, payer, role, name, created_at FROM api_keys "
            "WHERE key_hash = ? AND revoked_at IS NULL",
            (hash_api_key(key),),
        )
        if not rows:
            return None
        key_id, key_hash, payer, role, name, created_at = rows[0]
        return ApiKey(key_id, key_hash, payer, role, name, int(created_at))

    def revoke_key(self, key_id: str) -> bool:
        """Revoke the key with public id ``key_id``; returns whether one was live."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
        return cursor.rowcount > 0

    def count_keys(self) -> int:
        """Return how many live keys the ledger holds."""
        rows = self._read("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL", ())
        return int(rows[0][0])

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return list(self._conn.execute(sql, args).fetchall())
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot read {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise LedgerError(f"cannot write {self.path}: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} has ledger version {version}, newer than this openledger's "
                f"{SCHEMA_VERSION}; upgrade openledger to open it"
            )
        if version == SCHEMA_VERSION:
            return
        with self._write() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _make_private(path: Path) -> None:
    """Create the ledger's folder (0700) and file (0600) unless they exist."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise LedgerError(f"cannot create the ledger {path}: {exc}") from exc


def request_hash_of(value: str) -> Hash32:
    """Normalise a receipt id given as ``0x``-hex or as a response id (``chatcmpl-<hex>``)."""
    tail = value.rsplit("-", 1)[-1].lower()
    tail = tail.removeprefix("0x")
    return Hash32("0x" + tail)
