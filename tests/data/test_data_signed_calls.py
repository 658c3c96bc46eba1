"""What a datanet accepts from someone whose key is elsewhere: signed reviews, validator
entries, grants and calls, each checked here before anything is stored."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from datanet_rows import rows

from openledger.crypto import Account, to_hex
from openledger.data import Datanet, InstructionRecord
from openledger.data.remote_signing import CALL_TTL, check_call, sign_call, sign_review
from openledger.data.signing import grant_message, validator_message
from openledger.exceptions import (
    AccessDeniedError,
    ConfigError,
    NonceError,
    SignatureError,
)

CAROL = Account.from_key("0x" + "c3" * 32)


def test_a_call_is_checked_for_datanet_action_detail_time_and_signer(dn: Datanet) -> None:
    call = sign_call(dn.id, "deny:1", CAROL, detail="why")
    ok = {"datanet_id": dn.id, "action": "deny:1", "signers": {CAROL.address}, "detail": "why"}
    assert check_call(call, **ok) == CAROL.address
    refusals = [
        ({**ok, "datanet_id": "0x" + "11" * 32}, "asks for"),
        ({**ok, "action": "deny:2"}, "asks for"),
        ({**ok, "detail": "other"}, "detail"),
        ({**ok, "signers": {dn.owner}}, "is for"),
        ({**ok, "now": time.time() + CALL_TTL + 5}, "more than"),
    ]
    for changed, words in refusals:
        with pytest.raises(AccessDeniedError, match=words):
            check_call(call, **changed)  # type: ignore[arg-type]
    forged = call.model_copy(update={"signer": dn.owner})
    with pytest.raises(AccessDeniedError, match="not signed by"):
        check_call(forged, **{**ok, "signers": {dn.owner}})  # type: ignore[arg-type]
    with pytest.raises(AccessDeniedError, match="needs a call"):
        check_call(None, **ok)  # type: ignore[arg-type]


def test_a_review_signed_elsewhere_is_stored_once(
    dn: Datanet, alice: Account, owner: Account
) -> None:
    target = dn.contribute(rows(1), contributor=alice)[0].record_hash
    signed = sign_review(dn.id, target, accept=False, reason="off topic", validator=owner)
    dn.add_review(signed)
    assert dn.get(target).status == "rejected"
    with pytest.raises(NonceError, match="a replay"):
        dn.add_review(signed)
    with pytest.raises(AccessDeniedError, match="not allowed to review"):
        dn.add_review(sign_review(dn.id, target, accept=True, reason="fine", validator=CAROL))
    forged = signed.model_copy(update={"accept": True})
    with pytest.raises(SignatureError, match="not signed by"):
        dn.add_review(forged)
    foreign = sign_review("0x" + "22" * 32, target, accept=True, reason="x", validator=owner)
    with pytest.raises(SignatureError, match="signed for datanet"):
        dn.add_review(foreign)
    assert len(dn.reviews(target)) == 1
    assert dn.audit().ok


def test_a_validator_entry_and_a_grant_signed_elsewhere(
    tmp_path: Path, alice: Account, owner: Account
) -> None:
    dn = Datanet.create(
        tmp_path / "p", name="p", schema=InstructionRecord,
        visibility="private", owner=owner,
    )  # fmt: skip
    entry = owner.sign_typed_data(validator_message(dn.id, CAROL.address))
    with pytest.raises(AccessDeniedError, match="not signed by the owner"):
        dn.add_validator(
            CAROL, signature=alice.sign_typed_data(validator_message(dn.id, CAROL.address))
        )
    dn.add_validator(CAROL, signature=entry)
    assert dn.validators() == [CAROL.address]
    request = dn.request_access(sign_call(dn.id, "request-access", alice, detail="eval"), "eval")
    assert request.requester == alice.address
    with pytest.raises(AccessDeniedError):
        dn.request_access(sign_call(dn.id, "request-access", alice, detail="x"), "other")
    expires = int(time.time()) + 600

    def grant_by(signer: Account, grantee: str = alice.address) -> object:
        from openledger.data import AccessGrant

        message = grant_message(dn.id, grantee, request.id, expires)
        return AccessGrant(
            datanet_id=dn.id, grantee=grantee, request_id=request.id, expires_at=expires,
            signature=to_hex(signer.sign_typed_data(message)),
        )  # fmt: skip

    with pytest.raises(AccessDeniedError, match="not signed by the owner"):
        dn.approve(request.id, grant=grant_by(alice))  # type: ignore[arg-type]
    with pytest.raises(AccessDeniedError, match="request 1 is"):
        dn.approve(request.id, grant=grant_by(owner, CAROL.address))  # type: ignore[arg-type]
    assert dn.access_request(request.id).status == "pending"
    grant = dn.approve(request.id, grant=grant_by(owner))  # type: ignore[arg-type]
    assert dn.can_read(grant)
    assert dn.grant_for(request.id, requester=alice) == grant
    assert dn.grant_for(request.id, requester=sign_call(dn.id, "grant:1", alice)) == grant
    with pytest.raises(AccessDeniedError):
        dn.grant_for(request.id, requester=sign_call(dn.id, "grant:1", CAROL))
    assert [r.status for r in dn.access_requests()] == ["approved"]
    with pytest.raises(AccessDeniedError):
        dn.revoke(request.id, owner=sign_call(dn.id, "revoke:1", alice))
    dn.revoke(request.id, owner=sign_call(dn.id, "revoke:1", owner))
    assert not dn.can_read(grant)
    assert dn.access_requests("pending") == []
    dn.close()


def test_records_page_by_page(dn: Datanet, alice: Account) -> None:
    dn.contribute(rows(7), contributor=alice)
    seen, after = [], 0
    while True:
        page, after = dn.records_page(after=after, limit=3)
        if not page:
            break
        seen.extend(r.record_hash for r in page)
    assert seen == [r.record_hash for r in dn.records()]
    with pytest.raises(ConfigError, match="limit"):
        dn.records_page(limit=0)
