"""Encryption at rest: payloads sealed with the owner's key, nothing readable without it,
altered or moved payloads refused, and everything public (hashes, proofs, audits) intact."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from datanet_rows import rows

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, verify_proof
from openledger.data.store import STORE_FILE
from openledger.exceptions import AccessDeniedError, ConfigError, StoreError

KEY = bytes(range(32))


@pytest.fixture
def sealed(tmp_path: Path, owner: Account, alice: Account) -> Datanet:
    dn = Datanet.create(
        tmp_path / "s", name="sealed", schema=InstructionRecord, owner=owner, encryption_key=KEY
    )
    dn.contribute(rows(4), contributor=alice)
    yield dn  # type: ignore[misc]
    dn.close()


def test_no_record_text_is_in_the_files(sealed: Datanet) -> None:
    sealed._store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = b"".join(p.read_bytes() for p in sealed.path.iterdir() if p.is_file())
    for row in rows(4):
        assert row["instruction"].encode() not in files
        assert row["response"].encode() not in files
    assert [r.record for r in sealed.records()] == [InstructionRecord(**r) for r in rows(4)]


def test_without_the_key_records_stay_closed_but_proofs_and_audits_work(
    sealed: Datanet, alice: Account
) -> None:
    snap = sealed.snapshot()
    blind = Datanet.open(sealed.path)
    with pytest.raises(AccessDeniedError, match="encrypted at rest: open it with encryption_key"):
        list(blind.records())
    with pytest.raises(AccessDeniedError, match="encrypted at rest"):
        blind.contribute(rows(1, "x"), contributor=alice)
    first = snap.record_hashes()[0]
    assert verify_proof(snap.root, first, alice.address, blind.snapshot_at(1).proof(first))
    report = blind.audit()
    assert report.ok
    assert report.warnings[-1].startswith("records: payloads are encrypted at rest")
    assert Datanet.open(sealed.path, encryption_key=KEY).audit().warnings == []
    blind.close()


def test_a_wrong_key_or_a_key_for_a_clear_datanet_is_refused(sealed: Datanet, dn: Datanet) -> None:
    with pytest.raises(AccessDeniedError, match="not this datanet's key"):
        Datanet.open(sealed.path, encryption_key=os.urandom(32))
    with pytest.raises(ConfigError, match="32 bytes"):
        Datanet.open(sealed.path, encryption_key=b"short")
    with pytest.raises(ConfigError, match="does not encrypt its payloads"):
        Datanet.open(dn.path, encryption_key=KEY)


def test_a_payload_moved_to_another_row_does_not_open_and_is_named(sealed: Datanet) -> None:
    conn = sqlite3.connect(sealed.path / STORE_FILE)
    first = conn.execute("SELECT payload FROM records WHERE id = 1").fetchone()[0]
    conn.execute("UPDATE records SET payload = ? WHERE id = 2", (first,))
    conn.commit()
    conn.close()
    [problem] = sealed.audit().problems
    assert problem.startswith("record 2: the payload of record 0x")
    assert problem.endswith(
        "does not open: altered, moved from another row, or sealed with another key"
    )
    with pytest.raises(StoreError, match="does not open"):
        list(sealed.records())


def test_turning_encryption_off_in_the_file_is_refused(sealed: Datanet) -> None:
    conn = sqlite3.connect(sealed.path / STORE_FILE)
    conn.execute("UPDATE meta SET value = '' WHERE key = 'encryption'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="was tampered with"):
        Datanet.open(sealed.path)
