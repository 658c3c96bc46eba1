"""Private means private: review reasons, duplicate answers and writes need the grant that
reads need; records cannot be taken in transit (deadlines, commit before reveal)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from datanet_rows import rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, commitment_of
from openledger.exceptions import (
    AccessDeniedError,
    DuplicateRecordError,
    SignatureError,
    StoreError,
)


@pytest.fixture
def clinic(tmp_path: Path, owner: Account) -> Datanet:
    dn = Datanet.create(
        tmp_path / "p", name="clinic", schema=InstructionRecord, visibility="private", owner=owner
    )
    dn.contribute(rows(2), contributor=owner)
    yield dn  # type: ignore[misc]
    dn.close()


def test_review_reasons_of_a_private_datanet_need_a_grant(
    clinic: Datanet, owner: Account, bob: Account
) -> None:
    first = clinic.snapshot().record_hashes()[0]
    clinic.review(first, accept=False, reason="names the patient Jane Roe", validator=owner)
    [hidden] = clinic.reviews(first)
    assert (hidden.reason, hidden.signature, hidden.accept) == ("", "", False)
    grant = clinic.approve(clinic.request_access(bob, "audit").id, owner=owner)
    [shown] = clinic.reviews(first, grant=grant)
    assert shown.reason == "names the patient Jane Roe"
    assert shown.signature.startswith("0x")


def test_a_guessed_record_is_not_confirmed_to_someone_without_read_access(
    clinic: Datanet, owner: Account, bob: Account
) -> None:
    guess = rows(2)[0]
    with pytest.raises(AccessDeniedError, match="this datanet is private"):
        clinic.contribute([guess], contributor=bob)
    with pytest.raises(AccessDeniedError, match="this datanet is private"):
        clinic.contribute([guess], signed=clinic.sign([guess], contributor=bob))
    grant = clinic.approve(clinic.request_access(bob, "contribute").id, owner=owner)
    other = clinic.approve(clinic.request_access(Account.create(), "x").id, owner=owner)
    with pytest.raises(AccessDeniedError, match="not the contributor"):
        clinic.contribute([guess], contributor=bob, grant=other)
    with pytest.raises(DuplicateRecordError):  # bob may read: telling him tells nothing new
        clinic.contribute([guess], contributor=bob, grant=grant)
    assert len(clinic.contribute(rows(1, "new"), contributor=bob, grant=grant)) == 1
    assert len(clinic) == 3


def test_an_expired_signed_contribution_is_refused_and_stores_nothing(
    dn: Datanet, alice: Account
) -> None:
    data = rows(2)
    signed = dn.sign(data, contributor=alice)
    assert signed.deadline >= int(time.time()) + 3500
    late = signed.model_copy(update={"deadline": int(time.time()) - 1})
    with pytest.raises(SignatureError, match=r"deadline .* has passed"):
        dn.contribute(data, signed=late)
    assert len(dn) == 0
    assert len(dn.contribute(data, signed=signed)) == 2


def test_a_relay_cannot_take_records_committed_before_they_were_revealed(
    dn: Datanet, alice: Account
) -> None:
    relay = Account.from_key("0x" + "77" * 32)
    data = rows(3)
    hashes = [dn.record_hash(r) for r in data]
    # Alice commits first (the commitments say nothing about the records) ...
    assert dn.commit([commitment_of(h, alice.address) for h in hashes], contributor=alice) == 3
    signed = dn.sign(data, contributor=alice)
    # ... then hands records and signature to a relay, which tries to sign them itself.
    with pytest.raises(DuplicateRecordError, match="record 0 was committed to by another"):
        dn.contribute(data, contributor=relay)
    with pytest.raises(DuplicateRecordError, match="committed to by another"):
        dn.contribute(data[1:], signed=dn.sign(data[1:], contributor=relay))
    assert len(dn) == 0
    receipts = dn.contribute(data, signed=signed)
    assert {r.contributor for r in receipts} == {alice.address}
    assert dn._store.conn.execute("SELECT COUNT(*) FROM commitments").fetchone()[0] == 0
    assert dn.audit().ok


def test_a_later_commitment_does_not_beat_an_earlier_one(dn: Datanet, alice: Account) -> None:
    relay = Account.from_key("0x" + "77" * 32)
    data = rows(1)
    digest = dn.record_hash(data[0])
    dn.commit([commitment_of(digest, alice.address)], contributor=alice)
    dn.commit([commitment_of(digest, relay.address)], contributor=relay)
    with pytest.raises(DuplicateRecordError, match="committed to by another"):
        dn.contribute(data, contributor=relay)
    assert dn.contribute(data, contributor=alice)[0].contributor == alice.address


def test_expired_commitments_bind_nothing(dn: Datanet, alice: Account, bob: Account) -> None:
    data = rows(1)
    digest = dn.record_hash(data[0])
    dn.commit([commitment_of(digest, alice.address)], contributor=alice, ttl_seconds=1)
    dn._store.conn.execute("UPDATE commitments SET expires_at = 0")
    assert dn.contribute(data, contributor=bob)[0].contributor == bob.address


def test_a_bound_datanet_reads_only_grants_held_by_their_grantee(
    tmp_path: Path, owner: Account, alice: Account, bob: Account
) -> None:
    dn = Datanet.create(
        tmp_path / "b",
        name="b",
        schema=InstructionRecord,
        visibility="private",
        owner=owner,
        grants="bound",
    )
    dn.contribute(rows(2), contributor=owner)
    grant = dn.approve(dn.request_access(bob, "research").id, owner=owner)
    with pytest.raises(AccessDeniedError, match=r"pass grant=grant.bind\(grantee_account\)"):
        list(dn.records(grant=grant))  # the grant alone, e.g. copied from a log
    with pytest.raises(AccessDeniedError, match="bind it to that account's key"):
        grant.bind(alice)
    assert len(list(dn.records(grant=grant.bind(bob)))) == 2
    assert "_reader" not in grant.bind(bob).model_dump_json()  # the key never leaves memory
    dn.revoke(grant.request_id, owner=owner)
    with pytest.raises(AccessDeniedError, match="is revoked"):
        list(dn.records(grant=grant.bind(bob)))
    dn.close()
    flip = sqlite3.connect(tmp_path / "b" / "datanet.sqlite")
    flip.execute("UPDATE meta SET value = 'bearer' WHERE key = 'grants'")
    flip.commit()
    flip.close()
    with pytest.raises(StoreError, match="tampered"):
        Datanet.open(tmp_path / "b")


PEOPLE = [Account.from_key(f"0x{n + 1:064x}") for n in range(3)]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    commits=st.lists(st.integers(0, 2), max_size=4),
    attempts=st.lists(st.integers(0, 2), min_size=1, max_size=4),
)
def test_a_record_goes_to_its_earliest_committer_else_to_the_first_to_send_it(
    tmp_path_factory: pytest.TempPathFactory, commits: list[int], attempts: list[int]
) -> None:
    """Whatever the order of commitments and sends, the record is stored once, for the
    earliest committer when there is one (no one else succeeds), else for the first sender."""
    dn = Datanet.create(
        tmp_path_factory.mktemp("c") / "dn", name="c", schema=InstructionRecord, duplicates="skip"
    )
    data = rows(1)
    digest = dn.record_hash(data[0])
    for who in commits:
        dn.commit([commitment_of(digest, PEOPLE[who].address)], contributor=PEOPLE[who])
    stored_by = None
    for who in attempts:
        try:
            receipts = dn.contribute(data, contributor=PEOPLE[who])
        except DuplicateRecordError:
            continue
        if receipts:
            assert stored_by is None
            stored_by = who
    expected = commits[0] if commits else attempts[0]
    if commits and expected not in attempts:
        assert stored_by is None
    else:
        assert stored_by == expected
    assert len(dn) == (0 if stored_by is None else 1)
    dn.close()
