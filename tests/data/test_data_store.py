"""The SQLite store: migrations, refusals of unusable files, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord
from openledger.data.store import SCHEMA_VERSION, STORE_FILE, Store
from openledger.exceptions import StoreError

WRITER = r"""
import sys
from openledger.crypto import Account
from openledger.data import Datanet
dn = Datanet.open(sys.argv[1])
who = Account.from_key(sys.argv[2])
for batch in range(5):
    tag = sys.argv[2][-4:]
    rows = [{"instruction": f"{tag} q{batch}-{i}", "response": f"a{i}"} for i in range(200)]
    dn.contribute(rows, contributor=who)
"""


def test_new_store_is_at_the_latest_version_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", create=True)
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_newer_store_version_is_refused(tmp_path: Path) -> None:
    Datanet.create(tmp_path / "d", name="d", schema=InstructionRecord).close()
    conn = sqlite3.connect(tmp_path / "d" / STORE_FILE)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this openledger's"):
        Datanet.open(tmp_path / "d")


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / STORE_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="is not a usable datanet store"):
        Datanet.open(tmp_path / "g")


def test_two_processes_write_concurrently_without_losing_anything(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    Datanet.create(folder, name="c", schema=InstructionRecord, near_duplicate_threshold=0).close()
    keys = ["0x" + "c1" * 32, "0x" + "c2" * 32]
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), k]) for k in keys]
    assert [c.wait(timeout=120) for c in children] == [0, 0]
    dn = Datanet.open(folder)
    assert len(dn) == 2000
    for key in keys:
        assert dn.next_nonce(Account.from_key(key)) == 5
    ids = [r[0] for r in dn._store.conn.execute("SELECT id FROM records ORDER BY id")]
    assert ids == list(range(1, 2001))
    dn.close()
