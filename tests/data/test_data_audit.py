"""Audits from the file alone, tampering, and the migration that made them complete."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from datanet_rows import rows
from tests.data.store_edits import edit_store

from openledger.crypto import Account, to_hex
from openledger.data import Datanet, InstructionRecord
from openledger.data.signing import contribution_message
from openledger.data.store import MIGRATIONS, SCHEMA_VERSION, STORE_FILE


def test_clean_datanet_audits_ok(dn: Datanet, alice: Account, bob: Account) -> None:
    dn.contribute(rows(5), contributor=alice)
    signed = dn.sign(rows(3, "b"), contributor=bob)
    dn.contribute(rows(3, "b"), signed=signed)
    report = dn.audit()
    assert report.ok
    assert (report.records, report.contributions) == (8, 2)


def test_skipped_duplicates_still_audit_ok(tmp_path: Path, alice: Account, bob: Account) -> None:
    dn = Datanet.create(tmp_path / "s", name="s", schema=InstructionRecord, duplicates="skip")
    dn.contribute(rows(2), contributor=alice)
    data = [rows(3)[2], rows(1)[0]]
    receipts = dn.contribute(data, signed=dn.sign(data, contributor=bob))
    assert [r.position for r in receipts] == [0]
    assert dn.audit().ok


def test_tampering_is_reported(dn: Datanet, alice: Account) -> None:
    receipts = dn.contribute(rows(3), contributor=alice)
    edit_store(
        dn,
        (
            "UPDATE records SET payload = ? WHERE hash = ?",
            (
                b'{"data":{"instruction":"x","response":"forged"},'
                b'"schema":"openledger.instruction/1"}',
                bytes.fromhex(receipts[1].record_hash[2:]),
            ),
        ),
        ("UPDATE contributions SET nonce = 7", ()),
    )
    problems = dn.audit().problems
    assert problems[0] == f"record 2: payload does not hash to {receipts[1].record_hash}"
    assert problems[1] == f"contribution 1: signature is not {alice.address}'s"
    assert len(problems) == 2


def downgrade_to_version_1(file: Path, datanet_id: str, contributor: Account) -> None:
    """Turn a store file back into the first layout: undo what migrations 2 and 3 added,
    and sign the contributions as before deadlines existed."""
    conn = sqlite3.connect(file)
    rows = conn.execute("SELECT id, records_root, count, nonce FROM contributions").fetchall()
    for cid, root, count, nonce in rows:
        message = contribution_message(datanet_id, to_hex(root), count, nonce)
        signature = contributor.sign_typed_data(message)
        conn.execute("UPDATE contributions SET signature = ? WHERE id = ?", (signature, cid))
    for statement in (
        "ALTER TABLE contributions DROP COLUMN record_hashes",
        "ALTER TABLE contributions DROP COLUMN deadline",
        "ALTER TABLE validators DROP COLUMN signature",
        "DROP TABLE commitments",
        "PRAGMA user_version=1",
    ):
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_version_1_store_is_migrated_and_old_rows_are_still_audited(
    tmp_path: Path, alice: Account
) -> None:
    dn = Datanet.create(tmp_path / "m", name="m", schema=InstructionRecord)
    dn.contribute(rows(2), contributor=alice)
    dn.close()
    downgrade_to_version_1(tmp_path / "m" / STORE_FILE, dn.id, alice)
    assert len(MIGRATIONS) == SCHEMA_VERSION == 3
    again = Datanet.open(tmp_path / "m")
    assert again._store.conn.execute("PRAGMA user_version").fetchone()[0] == 3
    again.contribute(rows(1, "new"), contributor=alice)
    stored = again._store.conn.execute(
        "SELECT record_hashes IS NULL FROM contributions ORDER BY id"
    )
    assert [r[0] for r in stored] == [1, 0]
    report = again.audit()
    assert report.ok
    assert report.contributions == 2
    assert report.warnings == [
        "contribution 1: stored before store version 2 without its record hashes; "
        "only its signature was checked"
    ]
    again.close()


def test_forged_review_is_reported(dn: Datanet, alice: Account, owner: Account) -> None:
    receipts = dn.contribute(rows(1), contributor=alice)
    dn.review(receipts[0].record_hash, accept=False, reason="spam", validator=owner)
    edit_store(dn, ("UPDATE reviews SET reason = 'fine after all', accept = 1", ()))
    assert dn.audit().problems == [
        f"review 1: signature is not {owner.address}'s",
        "record 1: status 'rejected' is not 'accepted', what its latest signed review decided",
    ]
