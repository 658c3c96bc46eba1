"""Contributions: receipts, signatures, nonces, and bad input that stores nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from datanet_rows import rows

from openledger.crypto import Account, to_hex
from openledger.data import (
    Datanet,
    InstructionRecord,
    SignedContribution,
    record_hash,
    records_root,
    sign_contribution,
)
from openledger.exceptions import (
    ConfigError,
    DuplicateRecordError,
    NonceError,
    SchemaError,
    SignatureError,
    StoreError,
)


def state(dn: Datanet, who: Account) -> tuple[int, int, list[int]]:
    """What a failed contribution must leave unchanged."""
    count = dn._store.conn.execute("SELECT COUNT(*) FROM contributions").fetchone()[0]
    return len(dn), dn.next_nonce(who), [count]


def test_contribute_returns_receipts_and_stores_records(dn: Datanet, alice: Account) -> None:
    receipts = dn.contribute(rows(3), contributor=alice)
    assert [r.position for r in receipts] == [0, 1, 2]
    assert {r.contribution_id for r in receipts} == {1}
    assert all(r.contributor == alice.address for r in receipts)
    expected = record_hash(InstructionRecord.model_validate(rows(3)[1]))
    assert receipts[1].record_hash == expected
    stored = dn.get(expected)
    assert stored.record == InstructionRecord.model_validate(rows(3)[1])
    assert stored.contributor == alice.address
    assert dn.next_nonce(alice) == 1
    assert len(dn) == 3


def test_signed_elsewhere_then_verified(dn: Datanet, alice: Account) -> None:
    signed = dn.sign(rows(2), contributor=alice)
    receipts = dn.contribute(rows(2), signed=signed)
    assert len(receipts) == 2
    assert dn.next_nonce(alice) == 1
    root = dn._store.conn.execute("SELECT records_root FROM contributions").fetchone()[0]
    assert to_hex(root) == records_root([bytes.fromhex(r.record_hash[2:]) for r in receipts])


def test_reopen_sees_everything(dn: Datanet, alice: Account) -> None:
    dn.contribute(rows(4), contributor=alice)
    again = Datanet.open(dn.path)
    assert len(again) == 4
    assert again.id == dn.id
    assert again.schema is InstructionRecord
    assert again.next_nonce(alice.address) == 1
    again.close()


def bad(dn: Datanet, alice: Account, bob: Account, other: Datanet) -> dict[str, Callable[[], Any]]:
    good = rows(2, "new")
    signed = dn.sign(good, contributor=alice)
    tampered_sig = (
        signed.signature[:-4]
        + ("00" if signed.signature[-4:-2] != "00" else "11")
        + signed.signature[-2:]
    )
    tampered = signed.model_copy(update={"signature": tampered_sig})
    hashes = [bytes.fromhex(dn.record_hash(r)[2:]) for r in good]
    other_dn = sign_contribution(hashes, datanet_id=other.id, contributor=alice, nonce=0)
    by_bob = sign_contribution(hashes, datanet_id=dn.id, contributor=bob, nonce=1)
    foreign = by_bob.model_copy(update={"contributor": alice.address})
    replay = sign_contribution(hashes, datanet_id=dn.id, contributor=alice, nonce=0)
    ahead = sign_contribution(hashes, datanet_id=dn.id, contributor=alice, nonce=5)
    return {
        "schema": lambda: dn.contribute([{"instruction": "x"}], contributor=alice),
        "extra field": lambda: dn.contribute([{**good[0], "answer": "y"}], contributor=alice),
        "empty": lambda: dn.contribute([], contributor=alice),
        "oversize": lambda: dn.contribute(
            [{"instruction": "x" * 5000, "response": "y"}], contributor=alice
        ),
        "utf8": lambda: dn.contribute(
            [{"instruction": "a\udc80", "response": "y"}], contributor=alice
        ),
        "bytes utf8": lambda: dn.contribute(
            [{"instruction": b"\xff\xfe", "response": "y"}], contributor=alice
        ),
        "foreign": lambda: dn.contribute(good, signed=foreign),
        "tampered": lambda: dn.contribute(good, signed=tampered),
        "other records": lambda: dn.contribute(rows(2, "zzz"), signed=signed),
        "other datanet": lambda: dn.contribute(good, signed=other_dn),
        "replay": lambda: dn.contribute(good, signed=replay),
        "ahead": lambda: dn.contribute(good, signed=ahead),
        "duplicate": lambda: dn.contribute([*good, rows(1)[0]], contributor=alice),
        "in-batch duplicate": lambda: dn.contribute([good[0], good[1], good[0]], contributor=alice),
        "no signer": lambda: dn.contribute(good),
    }


CASES = [
    ("schema", SchemaError, r"record 0 does not fit InstructionRecord: response: Field required"),
    ("extra field", SchemaError, r"record 0 does not fit InstructionRecord: answer: Extra inputs"),
    ("empty", SchemaError, r"records is empty"),
    (
        "oversize",
        SchemaError,
        r"record 0 is \d+ bytes encoded, over this datanet's max_record_bytes=4096",
    ),
    ("utf8", SchemaError, r"record 0 does not fit InstructionRecord: instruction: .*unicode"),
    ("bytes utf8", SchemaError, r"record 0 does not fit InstructionRecord: instruction: .*unicode"),
    ("foreign", SignatureError, r"was not made by 0x"),
    ("tampered", SignatureError, r"signature"),
    ("other records", SignatureError, r"do not match the signed records_root"),
    ("other datanet", SignatureError, r"signed for datanet 0x[0-9a-f]{64}, not this one"),
    (
        "replay",
        NonceError,
        r"nonce 0 of 0x[0-9a-fA-F]{40} was already used \(replay\); the next nonce is 1",
    ),
    ("ahead", NonceError, r"nonce 5 .* skips ahead"),
    ("duplicate", DuplicateRecordError, r"record 2 is already in datanet 'small'"),
    ("in-batch duplicate", DuplicateRecordError, r"record 2 duplicates record 0 of the same"),
    ("no signer", ConfigError, r"pass exactly one of contributor=Account or signed="),
]


@pytest.mark.parametrize(("case", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_stores_nothing(
    tmp_path: Path, alice: Account, bob: Account, case: str, error: type[Exception], message: str
) -> None:
    dn = Datanet.create(
        tmp_path / "a", name="small", schema=InstructionRecord, max_record_bytes=4096
    )
    other = Datanet.create(tmp_path / "b", name="other", schema=InstructionRecord)
    dn.contribute(rows(1), contributor=alice)
    before = state(dn, alice)
    attempt = bad(dn, alice, bob, other)[case]
    with pytest.raises(error, match=message):
        attempt()
    assert state(dn, alice) == before
    assert dn.contribute(rows(2, "new"), contributor=alice)  # still usable afterwards


def test_skip_policy_drops_stored_and_repeated_records(tmp_path: Path, alice: Account) -> None:
    dn = Datanet.create(tmp_path / "s", name="s", schema=InstructionRecord, duplicates="skip")
    dn.contribute(rows(2), contributor=alice)
    batch = [rows(3)[2], rows(1)[0], rows(3)[2]]
    receipts = dn.contribute(batch, contributor=alice)
    assert len(receipts) == 1
    assert len(dn) == 3
    assert dn.contribute(rows(1), contributor=alice) == []
    assert dn.next_nonce(alice) == 2


def test_near_duplicates_are_flagged_not_refused(dn: Datanet, alice: Account) -> None:
    text = "the mitral valve separates the left atrium from the left ventricle of the heart"
    first = dn.contribute([{"instruction": "Which valve?", "response": text}], contributor=alice)
    near = dn.contribute(
        [{"instruction": "Which valve?", "response": text + " muscle"}], contributor=alice
    )
    far = dn.contribute(rows(1), contributor=alice)
    assert near[0].near_duplicates == (first[0].record_hash,)
    assert dn.flags(near[0].record_hash) == [("near-duplicate", first[0].record_hash)]
    assert far[0].near_duplicates == ()


def test_near_duplicates_within_one_batch_and_across_handles(dn: Datanet, alice: Account) -> None:
    text = "insulin is a peptide hormone produced by beta cells of the pancreatic islets"
    batch = [
        {"instruction": "What is insulin?", "response": text + suffix} for suffix in ("", " ok")
    ]
    receipts = dn.contribute(batch, contributor=alice)
    assert receipts[1].near_duplicates == (receipts[0].record_hash,)
    other = Datanet.open(dn.path)
    later = other.contribute(
        [{"instruction": "What is insulin?", "response": text + " yes"}], contributor=alice
    )
    assert set(later[0].near_duplicates) == {r.record_hash for r in receipts}
    other.close()


def test_create_refuses_bad_settings_and_existing_datanet(tmp_path: Path, alice: Account) -> None:
    with pytest.raises(ConfigError, match="visibility must be 'public' or 'private'"):
        Datanet.create(tmp_path / "x", name="x", schema=InstructionRecord, visibility="secret")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="a private datanet needs owner=Account"):
        Datanet.create(tmp_path / "x", name="x", schema=InstructionRecord, visibility="private")
    with pytest.raises(ConfigError, match="schema must be a Record subclass"):
        Datanet.create(tmp_path / "x", name="x", schema=dict)  # type: ignore[arg-type]
    Datanet.create(tmp_path / "y", name="y", schema=InstructionRecord).close()
    with pytest.raises(StoreError, match="already holds a datanet"):
        Datanet.create(tmp_path / "y", name="y", schema=InstructionRecord)
    with pytest.raises(StoreError, match="is not a datanet"):
        Datanet.open(tmp_path / "nowhere")


def test_open_refuses_a_changed_schema(tmp_path: Path) -> None:
    Datanet.create(tmp_path / "z", name="z", schema=InstructionRecord).close()

    class Changed(InstructionRecord):
        schema_id = "openledger.instruction/1"
        extra: str = ""

    with pytest.raises(SchemaError, match="does not match the datanet's schema"):
        Datanet.open(tmp_path / "z", schema=Changed)


def test_signed_contribution_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="signature must be 65 bytes"):
        SignedContribution(
            datanet_id="0x" + "00" * 32,
            contributor="0x" + "11" * 20,
            nonce=0,
            count=1,
            records_root="0x" + "22" * 32,
            signature="0x1234",
        )


def test_contributing_while_iterating_sees_the_records_of_the_start(
    dn: Datanet, alice: Account
) -> None:
    dn.contribute(rows(2500, "old"), contributor=alice)
    seen = 0
    for stored in dn.records():
        if seen % 1000 == 0:
            dn.contribute([{"instruction": f"new {seen}", "response": "r"}], contributor=alice)
        seen += 1
        assert stored.contributor == alice.address
    assert seen == 2500
    assert len(dn) == 2503
