"""Signed messages that carry a person's say-so to a hosted datanet.

A datanet service trusts signatures, not connections. Contributions already carry theirs
(:mod:`.signing`); this module adds the two others a service needs, in the same EIP-712
domain and naming the datanet id, so none verifies on another datanet:

* ``Review(bytes32 datanet, bytes32 recordHash, bool accept, string reason)``, the message
  :meth:`Datanet.review` has always signed, as a :class:`SignedReview` made where the
  validator's key is (:func:`sign_review`) and stored elsewhere (``Datanet.add_review``);
* ``DatanetCall(bytes32 datanet, string action, string detail, uint64 at)``: "I, the
  signer, ask for ``action`` now" (:class:`SignedCall`), for what has no message of its
  own: filing an access request (``detail`` is the purpose), fetching one's grant, the
  owner's denials, revocations and snapshots, a bound grant's read. A call is good for
  :data:`CALL_TTL` seconds around ``at``.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from pydantic import BaseModel, ConfigDict, Field

from openledger.crypto import Account, TypedData, from_hex, keccak256_hex, to_hex, typed_data
from openledger.data.signing import (
    DOMAIN,
    HexAddress,
    HexHash,
    HexSignature,
    review_message,
    signer_of,
)
from openledger.exceptions import AccessDeniedError, SignatureError
from openledger.types import Address

__all__ = [
    "CALL_TTL",
    "SignedCall",
    "SignedReview",
    "call_message",
    "check_call",
    "commitments_digest",
    "sign_call",
    "sign_review",
]

CALL_TTL = 300
"""Seconds a :class:`SignedCall` is accepted before or after its ``at``."""

_CALL = {
    "DatanetCall": [
        ("datanet", "bytes32"),
        ("action", "string"),
        ("detail", "string"),
        ("at", "uint64"),
    ]
}


class SignedReview(BaseModel):
    """A validator's signed decision on one record, made where its key is.

    Attributes:
        datanet_id: The datanet.
        record_hash: The record reviewed.
        accept: Accept (``True``) or reject.
        reason: The validator's reason (it is part of what is signed).
        validator: The signer's address.
        signature: EIP-712 signature over ``Review(datanet, recordHash, accept, reason)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    datanet_id: HexHash
    record_hash: HexHash
    accept: bool
    reason: str
    validator: HexAddress
    signature: HexSignature


class SignedCall(BaseModel):
    """A person's signed request for one action on one datanet, at one moment.

    Attributes:
        datanet_id: The datanet.
        action: What is asked, e.g. ``"grant:3"`` (fetch the grant of request 3).
        detail: What else the action needs signed (the purpose of an access request).
        at: Unix time (seconds) of signing.
        signer: The signer's address.
        signature: EIP-712 signature over ``DatanetCall(datanet, action, detail, at)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    datanet_id: HexHash
    action: str = Field(min_length=1, max_length=200)
    detail: str = Field(default="", max_length=10_000)
    at: int = Field(ge=0, lt=2**64)
    signer: HexAddress
    signature: HexSignature


def sign_review(
    datanet_id: str, record_hash: str | bytes, *, accept: bool, reason: str, validator: Account
) -> SignedReview:
    """Sign a review of one record (where the validator's key is)."""
    digest = to_hex(from_hex(record_hash, size=32, what="record_hash"))
    signature = validator.sign_typed_data(review_message(datanet_id, digest, accept, reason))
    return SignedReview(
        datanet_id=datanet_id,
        record_hash=digest,
        accept=accept,
        reason=reason,
        validator=validator.address,
        signature=to_hex(signature),
    )


def call_message(datanet_id: str, action: str, detail: str, at: int) -> TypedData:
    """Return the EIP-712 payload of a call."""
    message = {"datanet": from_hex(datanet_id, size=32), "action": action, "detail": detail}
    return typed_data(DOMAIN, _CALL, "DatanetCall", {**message, "at": at})


def sign_call(
    datanet_id: str, action: str, signer: Account, *, detail: str = "", at: int | None = None
) -> SignedCall:
    """Sign a call for ``action`` on a datanet, dated now unless ``at`` says otherwise."""
    moment = int(time.time()) if at is None else at
    data = call_message(datanet_id, action, detail, moment)
    return SignedCall(
        datanet_id=datanet_id,
        action=action,
        detail=detail,
        at=moment,
        signer=signer.address,
        signature=to_hex(signer.sign_typed_data(data)),
    )


def check_call(
    call: SignedCall | None,
    *,
    datanet_id: str,
    action: str,
    signers: Collection[str],
    detail: str | None = None,
    now: float | None = None,
) -> Address:
    """Return the signer of ``call`` if it asks for ``action`` here, now, by one of ``signers``.

    Raises:
        AccessDeniedError: Naming what is wrong: missing, another datanet or action, too
            old or too far ahead, not signed by its signer, or by someone not allowed.
    """
    if call is None:
        raise AccessDeniedError(f"{action!r} needs a call signed by {_who(signers)}")
    if call.datanet_id != datanet_id or call.action != action:
        raise AccessDeniedError(
            f"the signed call asks for {call.action!r} on {call.datanet_id}, not {action!r} "
            f"on {datanet_id}"
        )
    if detail is not None and call.detail != detail:
        raise AccessDeniedError(f"the signed call's detail is not what {action!r} carries")
    moment = time.time() if now is None else now
    if abs(moment - call.at) > CALL_TTL:
        raise AccessDeniedError(
            f"the signed call is dated {call.at}, more than {CALL_TTL} s from now; sign it again"
        )
    data = call_message(datanet_id, call.action, call.detail, call.at)
    try:
        signer = signer_of(data, call.signature, what="call")
    except SignatureError as exc:
        raise AccessDeniedError(str(exc)) from None
    if signer != call.signer:
        raise AccessDeniedError(f"the call was not signed by {call.signer} (foreign or altered)")
    if signer not in signers:
        raise AccessDeniedError(f"{action!r} is for {_who(signers)}, not {signer}")
    return signer


def commitments_digest(commitments: Sequence[str | bytes]) -> str:
    """What a ``commit`` call signs as its detail: keccak256 of the commitments in order."""
    return keccak256_hex(b"".join(from_hex(c, size=32, what="commitment") for c in commitments))


def _who(signers: Collection[str]) -> str:
    return " or ".join(sorted(signers)) or "nobody (the datanet has no owner)"
