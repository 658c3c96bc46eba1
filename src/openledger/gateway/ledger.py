"""The gateway's durable SQLite ledger: API keys, signed receipts, and their settlement.

Receipts are written one transaction each, in WAL mode with ``synchronous=FULL``: a
receipt is on disk (the log fsync'd) before :meth:`ReceiptLedger.record` returns, and so
before the response it meters is finished. The request id is the primary key, so a
receipt is recorded once, across restarts too. The file is created with mode 0600.

Tables (schema version 2)::

    api_keys      key hashes -> payer accounts and roles
    receipts      request id -> signed GatewayReceipt (JSON), epoch window, token counts
    answers       request id -> (prompt, answer) texts awaiting attribution; deleted once
                  attributed (the only place answer texts are kept)
    attributions  (request id, adapter id) -> contributors' shares of that adapter's part
    epochs        reward epochs: id, root, payouts, signed usage receipts, state
                  (prepared -> posted, or abandoned), the posting transaction
    settled       request id -> the epoch that paid for it (once: primary key)
    settings      the ledger's fixed settings (the window length receipts were cut by)

Settlement's tables are read and written by :mod:`openledger.gateway.settlement` and
:mod:`openledger.gateway.attribution_worker` through :meth:`ReceiptLedger.read` and
:meth:`ReceiptLedger.transaction`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
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

__all__ = ["ReceiptLedger", "pin_settings"]

SCHEMA_VERSION = 3
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
CREATE TABLE IF NOT EXISTS answers (
    request_id TEXT PRIMARY KEY REFERENCES receipts (request_id),
    pairs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attributions (
    request_id TEXT NOT NULL REFERENCES receipts (request_id),
    adapter_id TEXT NOT NULL,
    snapshot_root TEXT NOT NULL,
    datanet_id TEXT,
    snapshot_id INTEGER,
    method TEXT NOT NULL,
    shares TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (request_id, adapter_id)
);
CREATE TABLE IF NOT EXISTS epochs (
    epoch_id INTEGER PRIMARY KEY,
    chain_id INTEGER NOT NULL,
    contract TEXT NOT NULL,
    through_window INTEGER NOT NULL,
    root TEXT NOT NULL,
    total TEXT NOT NULL,
    deadline INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'posted', 'abandoned')),
    tx_hash TEXT,
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settled (
    request_id TEXT PRIMARY KEY REFERENCES receipts (request_id),
    epoch_id INTEGER REFERENCES epochs (epoch_id)
);
CREATE INDEX IF NOT EXISTS settled_by_epoch ON settled (epoch_id);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS served_adapters (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    adapter_id TEXT NOT NULL,
    sha256 TEXT,
    saved_at INTEGER NOT NULL
);
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

    def record(
        self,
        signed: SignedGatewayReceipt,
        *,
        finish_reason: str = "stop",
        answers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Write one receipt in its own fsync'd transaction.

        Args:
            signed: The signed receipt.
            finish_reason: How the request ended (kept beside the receipt).
            answers: ``(prompt, answer)`` texts of its choices, kept (in the same
                transaction) until the attribution worker has credited them; give them
                for requests served with adapters.

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
                if answers:
                    pairs = json.dumps([list(pair) for pair in answers], ensure_ascii=False)
                    conn.execute("INSERT INTO answers VALUES (?, ?)", (receipt.request_id, pairs))
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

    def count_pending(self) -> tuple[int, int]:
        """Return how many receipts are not settled yet, and how many of those still wait
        for the attribution worker."""
        rows = self._read(
            "SELECT (SELECT COUNT(*) FROM receipts WHERE request_id NOT IN "
            "(SELECT request_id FROM settled)), (SELECT COUNT(*) FROM answers)",
            (),
        )
        return int(rows[0][0]), int(rows[0][1])

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

    def save_adapter(self, name: str, source: str, adapter_id: str, sha256: str | None) -> None:
        """Remember that ``name`` serves ``adapter_id`` from ``source`` (loaded or replaced
        through the admin API), so that a restarted gateway serves it again."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO served_adapters VALUES (?, ?, ?, ?, ?)",
                (name, source, adapter_id, sha256, int(time.time())),
            )

    def forget_adapter(self, name: str) -> bool:
        """Forget a saved adapter registration; returns whether there was one."""
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM served_adapters WHERE name = ?", (name,))
        return cursor.rowcount > 0

    def saved_adapters(self) -> list[tuple[str, str, str, str | None]]:
        """The saved registrations, ``(name, source, adapter_id, sha256)``, oldest first."""
        rows = self._read(
            "SELECT name, source, adapter_id, sha256 FROM served_adapters ORDER BY saved_at, name",
            (),
        )
        return [(str(n), str(s), str(i), None if h is None else str(h)) for n, s, i, h in rows]

    def setting(self, name: str, default: str) -> str:
        """Return a fixed setting of the ledger, storing ``default`` the first time.

        The first value written stays (one transaction): every later caller reads it.
        """
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)", (name, default))
            row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return str(row[0])

    def read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one query and return its rows (for the gateway's settlement modules).

        Raises:
            LedgerError: The file cannot be read.
        """
        return self._read(sql, args)

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``; fsync'd at commit, rolled back on
        any error), for the gateway's settlement modules.

        Raises:
            LedgerError: The file cannot be written.
        """
        return self._write()

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


def pin_settings(
    ledger: ReceiptLedger, operator: str, epoch_seconds: int, domain: dict[str, Any]
) -> None:
    """Record the operator, window length and receipt domain on a ledger's first use, and
    refuse a gateway that would sign or cut windows differently later.

    Raises:
        ConfigError: The ledger was written with other settings (named).
    """
    wanted = {
        "operator": to_checksum_address(operator),
        "epoch_seconds": str(epoch_seconds),
        "receipt_domain": json.dumps(domain, sort_keys=True),
    }
    for name, value in wanted.items():
        stored = ledger.setting(name, value)
        if stored != value:
            raise ConfigError(
                f"{ledger.path} was written with {name} = {stored}, not {value}: serve it with "
                "the same operator key, epoch_seconds, chain_id and verifying_contract, or "
                "start a new ledger"
            )


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
