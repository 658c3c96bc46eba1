"""User-defined record schemas work everywhere a built-in does."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from openledger.crypto import Account
from openledger.data import Datanet, Record, verify_proof
from openledger.data.settings import bind_id
from openledger.exceptions import SchemaError


class Triage(Record):
    """A module-level user schema (importable by its path when the datanet is reopened)."""

    symptoms: str
    urgency: int
    tags: tuple[str, ...] = ()


def test_custom_schema_contribute_snapshot_export_reopen(tmp_path: Path, alice: Account) -> None:
    dn = Datanet.create(tmp_path / "t", name="triage", schema=Triage)
    assert Triage.schema_id.endswith("Triage/1")
    receipts = dn.contribute(
        [
            {"symptoms": "chest pain", "urgency": 1, "tags": ["cardio"]},
            {"symptoms": "rash", "urgency": 4},
        ],
        contributor=alice,
    )
    snap = dn.snapshot()
    assert verify_proof(
        snap.root, receipts[0].record_hash, alice.address, snap.proof(receipts[0].record_hash)
    )
    dn.to_jsonl(tmp_path / "t.jsonl")
    first = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert first["tags"] == ["cardio"]
    assert first["urgency"] == 1
    dn.close()
    with pytest.raises(SchemaError, match="which is not allowed"):
        Datanet.open(tmp_path / "t")
    again = Datanet.open(tmp_path / "t", allow_modules=[Triage.__module__])
    assert again.schema is Triage
    assert again.get(receipts[1].record_hash).record == Triage(symptoms="rash", urgency=4)
    with pytest.raises(SchemaError, match=r"record 0 does not fit Triage: urgency"):
        again.contribute([{"symptoms": "cough", "urgency": "soon"}], contributor=alice)
    again.close()


def test_unimportable_schema_must_be_passed_on_open(tmp_path: Path) -> None:
    class Local(Record):
        text: str

    Datanet.create(tmp_path / "l", name="l", schema=Local).close()
    with pytest.raises(SchemaError, match="cannot be imported; pass schema=YourRecord"):
        Datanet.open(tmp_path / "l", allow_modules=[__name__])
    assert Datanet.open(tmp_path / "l", schema=Local).schema is Local


def test_a_hostile_schema_ref_is_refused_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A datanet folder whose file names a module that runs code on import."""
    (tmp_path / "evil_schema_mod.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('ran').write_text('pwned')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    Datanet.create(tmp_path / "h", name="h", schema=Triage).close()
    conn = sqlite3.connect(tmp_path / "h" / "datanet.sqlite")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    meta["schema_ref"] = "evil_schema_mod:Anything"
    bind_id(meta)  # a hostile folder is consistent: its id follows its settings
    conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in meta.items()])
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="'evil_schema_mod', which is not allowed"):
        Datanet.open(tmp_path / "h")
    assert not (tmp_path / "ran").exists()
