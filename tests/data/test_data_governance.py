"""Quality rules, reviews, reputation, validators and access grants."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from datanet_rows import rows

from openledger.crypto import Account, to_hex
from openledger.data import (
    AccessGrant,
    Datanet,
    DenyPatternRule,
    InstructionRecord,
    LengthRule,
    RequiredFieldsRule,
)
from openledger.data.signing import grant_message
from openledger.exceptions import AccessDeniedError, ConfigError, DataNotFoundError, QualityError


def test_rules_refuse_records_and_store_nothing(tmp_path: Path, alice: Account) -> None:
    rules = [
        LengthRule(min_chars=10, max_chars=500),
        RequiredFieldsRule(("input",)),
        DenyPatternRule(),
    ]
    dn = Datanet.create(tmp_path / "r", name="r", schema=InstructionRecord, rules=rules)
    ok = {"instruction": "Summarise the case", "input": "Patient, 54", "response": "Stable angina."}
    dn.contribute([ok], contributor=alice)
    cases = [
        (
            {"instruction": "Hi", "input": "x", "response": "y"},
            "'length': text has 6 characters, fewer than min_chars=10",
        ),
        (
            {"instruction": "Summarise this", "input": " ", "response": "Fine."},
            "'required-fields': required field 'input' is missing",
        ),
        (
            {**ok, "input": "mail me at jane@example.org"},
            "'deny-patterns': text matches the deny-listed pattern 'email address'",
        ),
        ({**ok, "input": "key " + "0x" + "ab" * 32}, "deny-listed pattern 'hex private key'"),
    ]
    for row, message in cases:
        with pytest.raises(QualityError, match=message.replace("(", r"\(")):
            dn.contribute([ok | {"instruction": "another one"}, row], contributor=alice)
        assert len(dn) == 1
        assert dn.next_nonce(alice) == 1


def test_bad_regex_and_bad_rules_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid regex"):
        DenyPatternRule({"broken": "("})
    with pytest.raises(ConfigError, match="rules must have a name and check"):
        Datanet.create(tmp_path / "x", name="x", schema=InstructionRecord, rules=[len])  # type: ignore[list-item]
    assert not (tmp_path / "x").exists()


def test_reviews_exclude_records_and_lower_reputation(
    dn: Datanet, alice: Account, owner: Account
) -> None:
    receipts = dn.contribute(rows(4), contributor=alice)
    assert dn.reputation(alice).score == 1.0
    validator = Account.from_key("0x" + "77" * 32)
    dn.add_validator(validator, owner=owner)
    assert dn.validators() == [validator.address]
    dn.review(
        receipts[0].record_hash, accept=False, reason="hallucinated dose", validator=validator
    )
    rep = dn.reputation(alice.address)
    assert (rep.records, rep.rejected) == (4, 1)
    assert rep.score == pytest.approx(4 / 5)
    dn.review(receipts[1].record_hash, accept=False, reason="off topic", validator=owner)
    assert dn.reputation(alice).score == pytest.approx(3 / 5)
    assert dn.snapshot().count == 2
    assert len(list(dn.records())) == 2
    assert len(list(dn.records(include_rejected=True))) == 4
    dn.review(receipts[1].record_hash, accept=True, reason="fixed on appeal", validator=owner)
    assert dn.reputation(alice).rejected == 1
    assert dn.snapshot().count == 3
    history = dn.reviews(receipts[1].record_hash)
    assert [(r.accept, r.reason, r.validator) for r in history] == [
        (False, "off topic", owner.address),
        (True, "fixed on appeal", owner.address),
    ]
    assert len(dn.reviews()) == 3
    report = dn.audit()
    assert report.ok
    assert report.reviews == 3


def test_only_validators_review_and_only_the_owner_adds_them(
    dn: Datanet, alice: Account, bob: Account
) -> None:
    receipts = dn.contribute(rows(1), contributor=alice)
    with pytest.raises(AccessDeniedError, match="validator is not allowed"):
        dn.review(receipts[0].record_hash, accept=False, reason="spam", validator=bob)
    with pytest.raises(AccessDeniedError, match="only the owner"):
        dn.add_validator(bob, owner=bob)
    with pytest.raises(DataNotFoundError, match="no record with hash"):
        dn.review(
            "0x" + "00" * 32, accept=False, reason="x", validator=Account.from_key("0x" + "0e" * 32)
        )
    assert dn.reputation(alice).rejected == 0


@pytest.fixture
def private(tmp_path: Path, owner: Account, alice: Account) -> Datanet:
    dn = Datanet.create(
        tmp_path / "p", name="clinic", schema=InstructionRecord, visibility="private", owner=owner
    )
    member = dn.approve(dn.request_access(alice, "contribute").id, owner=owner)
    dn.contribute(rows(3), contributor=alice, grant=member)
    return dn


def test_the_same_purpose_filed_again_while_pending_is_the_same_request(
    private: Datanet, owner: Account, bob: Account
) -> None:
    first = private.request_access(bob, "train a triage model")
    assert private.request_access(bob, "train a triage model") == first
    other = private.request_access(bob, "evaluate a triage model")
    assert other.id != first.id
    private.deny(first.id, owner=owner)
    again = private.request_access(bob, "train a triage model")  # NOTE: a new ask now
    assert again.id not in (first.id, other.id)
    assert [r.id for r in private.access_requests("pending")] == [other.id, again.id]


def test_private_reads_need_a_valid_grant(private: Datanet, owner: Account, bob: Account) -> None:
    with pytest.raises(AccessDeniedError, match="this datanet is private: pass grant="):
        list(private.records())
    with pytest.raises(AccessDeniedError, match="private"):
        private.to_jsonl(private.path / "out.jsonl")
    request = private.request_access(bob, "train a triage model")
    assert private.access_request(request.id).status == "pending"
    grant = private.approve(request.id, owner=owner, ttl_seconds=60)
    assert len(list(private.records(grant=grant))) == 3
    snap = private.snapshot()
    with pytest.raises(AccessDeniedError):
        list(snap.records())
    assert len(list(snap.records(grant=grant))) == 3
    private.revoke(request.id, owner=owner)
    with pytest.raises(AccessDeniedError, match="is revoked, not approved"):
        list(private.records(grant=grant))


def test_forged_expired_and_foreign_grants_are_refused(
    private: Datanet, owner: Account, bob: Account, tmp_path: Path
) -> None:
    request = private.request_access(bob.address, "research")
    grant = private.approve(request.id, owner=owner, ttl_seconds=60)
    forged = grant.model_copy(
        update={
            "signature": to_hex(
                bob.sign_typed_data(
                    grant_message(private.id, bob.address, request.id, grant.expires_at)
                )
            )
        }
    )
    with pytest.raises(AccessDeniedError, match="not signed by this datanet's owner"):
        list(private.records(grant=forged))
    stale_time = int(time.time()) - 5
    expired = AccessGrant(
        datanet_id=private.id,
        grantee=bob.address,
        request_id=request.id,
        expires_at=stale_time,
        signature=to_hex(
            owner.sign_typed_data(grant_message(private.id, bob.address, request.id, stale_time))
        ),
    )
    with pytest.raises(AccessDeniedError, match="expired"):
        list(private.records(grant=expired))
    other = Datanet.create(
        tmp_path / "o", name="o", schema=InstructionRecord, visibility="private", owner=owner
    )
    with pytest.raises(AccessDeniedError, match="the grant is for datanet"):
        list(other.records(grant=grant))


def test_owner_decisions(private: Datanet, owner: Account, bob: Account) -> None:
    request = private.request_access(bob, "audit")
    with pytest.raises(AccessDeniedError, match="only the owner"):
        private.approve(request.id, owner=bob)
    private.deny(request.id, owner=owner)
    with pytest.raises(ConfigError, match="is denied, not pending"):
        private.approve(request.id, owner=owner)
    with pytest.raises(ConfigError, match="purpose must say"):
        private.request_access(bob, "  ")
    with pytest.raises(DataNotFoundError, match="no access request with id 99"):
        private.access_request(99)


def test_public_datanets_need_no_grant(dn: Datanet, alice: Account, bob: Account) -> None:
    dn.contribute(rows(2), contributor=alice)
    assert len(list(dn.records())) == 2
    with pytest.raises(ConfigError, match="is public; reading it needs no grant"):
        dn.request_access(bob, "x")
