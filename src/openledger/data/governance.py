"""Validators, signed reviews, contributor reputation, and the owner's access decisions."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from openledger.crypto import Account, TypedData, from_hex, to_hex
from openledger.data.access import AccessGrant, AccessRequest, decide, load_request, new_request
from openledger.data.receipts import Reputation, Review
from openledger.data.remote_signing import SignedCall, SignedReview, check_call, sign_review
from openledger.data.signing import (
    as_account_address,
    grant_message,
    review_message,
    signer_of,
    validator_message,
)
from openledger.data.store_api import Connection
from openledger.exceptions import (
    AccessDeniedError,
    ConfigError,
    DataNotFoundError,
    NonceError,
    SignatureError,
)
from openledger.types import Address, Hash32

if TYPE_CHECKING:
    from openledger.data.datanet import Datanet

__all__ = [
    "access_requests",
    "add_review",
    "add_validator",
    "approve",
    "deny",
    "flags",
    "grant_for",
    "reputation",
    "request_access",
    "require_owner",
    "review",
    "reviews",
    "revoke",
    "signed_validators",
    "validators",
]

Owner = Account | SignedCall
"""The owner's say-so: its key here, or its signed call for the action (a service)."""


def require_owner(datanet: Datanet, owner: Owner | None, action: str = "") -> None:
    """Raise unless ``owner`` is the datanet's owner (or its fresh call for ``action``)."""
    if datanet.owner is None:
        raise AccessDeniedError(
            f"datanet {datanet.name!r} has no owner; create it with owner=Account to govern it"
        )
    if isinstance(owner, SignedCall):
        check_call(owner, datanet_id=datanet.id, action=action, signers={datanet.owner})
    elif not isinstance(owner, Account) or owner.address != datanet.owner:
        raise AccessDeniedError(f"only the owner {datanet.owner} may do this")


def add_validator(
    datanet: Datanet,
    address: Address,
    *,
    owner: Account | None = None,
    signature: str | bytes | None = None,
) -> None:
    """Store ``address`` as a validator with the owner's signature (idempotent): made here
    with ``owner``'s key, or made elsewhere and passed as ``signature``."""
    message = validator_message(datanet.id, address)
    if signature is None:
        require_owner(datanet, owner)
        signature = cast(Account, owner).sign_typed_data(message)
    else:
        require_owner_signed(datanet, message, signature)
        signature = from_hex(signature, size=65, what="signature")
    with datanet._store.write() as conn:
        conn.execute(
            "INSERT INTO validators (address, signature) VALUES (?, ?) ON CONFLICT (address)"
            " DO UPDATE SET signature = excluded.signature",
            (address, signature),
        )


def signed_validators(
    conn: Connection, datanet_id: str, owner: str | None
) -> tuple[list[Address], list[Address]]:
    """Split the stored validators into those the owner signed and the others, sorted."""
    good: list[Address] = []
    bad: list[Address] = []
    for address, signature in conn.execute(
        "SELECT address, signature FROM validators ORDER BY address"
    ):
        try:
            valid = (
                owner is not None
                and signature is not None
                and (
                    signer_of(
                        validator_message(datanet_id, address), bytes(signature), what="validator"
                    )
                    == owner
                )
            )
        except SignatureError:
            valid = False
        (good if valid else bad).append(Address(address))
    return good, bad


def validators(datanet: Datanet) -> list[Address]:
    """Return the validators the owner signed for, sorted."""
    return signed_validators(datanet._store.conn, datanet.id, datanet.owner)[0]


def require_owner_signed(datanet: Datanet, data: TypedData, signature: str | bytes) -> None:
    """Raise unless the owner signed ``data``."""
    if datanet.owner is None or signer_of(data, signature, what="owner") != datanet.owner:
        raise AccessDeniedError(f"not signed by the owner of datanet {datanet.name!r}")


def _check_reviewer(datanet: Datanet, validator: object, reason: str) -> None:
    allowed = {*validators(datanet), *([datanet.owner] if datanet.owner else [])}
    if validator not in allowed:
        raise AccessDeniedError(
            "validator is not allowed to review this datanet; the owner adds validators "
            "with add_validator"
        )
    if not reason.strip():
        raise ConfigError("reason must explain the decision; got an empty string")


def review(
    datanet: Datanet, record_hash: str | bytes, *, accept: bool, reason: str, validator: Account
) -> None:
    """Sign and store a review; the latest review decides the record's status."""
    address = validator.address if isinstance(validator, Account) else None
    _check_reviewer(datanet, address, reason)
    signed = sign_review(datanet.id, record_hash, accept=accept, reason=reason, validator=validator)
    _store_review(datanet, signed, refuse_repeat=False)


def add_review(datanet: Datanet, signed: SignedReview) -> None:
    """Store a review signed elsewhere, after checking datanet, validator and signature.

    Raises:
        SignatureError: Signed for another datanet, or not by its validator.
        NonceError: The validator already signed exactly this review of the record: a
            replay (a new decision needs new words in ``reason``).
    """
    if signed.datanet_id != datanet.id:
        raise SignatureError(
            f"the review was signed for datanet {signed.datanet_id}, not {datanet.id}"
        )
    _check_reviewer(datanet, signed.validator, signed.reason)
    data = review_message(datanet.id, signed.record_hash, signed.accept, signed.reason)
    if signer_of(data, signed.signature, what="review") != signed.validator:
        raise SignatureError(f"the review was not signed by {signed.validator}")
    _store_review(datanet, signed, refuse_repeat=True)


def _store_review(datanet: Datanet, signed: SignedReview, *, refuse_repeat: bool) -> None:
    digest = from_hex(signed.record_hash, size=32)
    with datanet._store.write() as conn:
        row = conn.execute("SELECT id FROM records WHERE hash = ?", (digest,)).fetchone()
        if row is None:
            raise DataNotFoundError(f"no record with hash {to_hex(digest)} to review")
        fields = (row[0], signed.validator, int(signed.accept), signed.reason)
        if (
            refuse_repeat
            and conn.execute(
                "SELECT 1 FROM reviews WHERE record_id = ? AND validator = ? AND accept = ?"
                " AND reason = ?",
                fields,
            ).fetchone()
        ):
            raise NonceError(
                f"{signed.validator} already signed exactly this review of {to_hex(digest)} "
                "(a replay); a new decision needs a new reason"
            )
        conn.execute(
            "INSERT INTO reviews (record_id, validator, accept, reason, signature, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (*fields, from_hex(signed.signature, size=65), time.time()),
        )
        status = "accepted" if signed.accept else "rejected"
        conn.execute("UPDATE records SET status = ? WHERE id = ?", (status, row[0]))


def reviews(conn: Connection, record_hash: str | bytes | None = None) -> list[Review]:
    """Return stored reviews, oldest first (of one record, or of all)."""
    where, params = (
        ("WHERE records.hash = ?", (from_hex(record_hash, size=32),)) if record_hash else ("", ())
    )
    rows = conn.execute(
        "SELECT records.hash, validator, accept, reason, signature, reviews.created_at"
        f" FROM reviews JOIN records ON records.id = reviews.record_id {where}"
        " ORDER BY reviews.id",
        params,
    )
    return [
        Review(Hash32(to_hex(h)), Address(v), bool(a), r, to_hex(sig), float(t))
        for h, v, a, r, sig, t in rows
    ]


def flags(conn: Connection, record_hash: str | bytes) -> list[tuple[str, str]]:
    """Return ``(kind, detail)`` flags of one record."""
    digest = from_hex(record_hash, size=32, what="record_hash")
    rows = conn.execute(
        "SELECT kind, detail FROM flags JOIN records ON records.id = flags.record_id"
        " WHERE records.hash = ? ORDER BY flags.rowid",
        (digest,),
    )
    return [(str(k), str(d)) for k, d in rows]


def reputation(conn: Connection, address: Address) -> Reputation:
    """Count a contributor's records and rejections."""
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END), 0)"
        " FROM records WHERE contributor = ?",
        (address,),
    ).fetchone()
    return Reputation(address, int(row[0]), int(row[1]))


def request_access(
    datanet: Datanet, requester: Account | str | SignedCall, purpose: str
) -> AccessRequest:
    """File a pending access request (a signed ``request-access`` call proves who asks)."""
    if datanet.visibility == "public":
        raise ConfigError(f"datanet {datanet.name!r} is public; reading it needs no grant")
    if isinstance(requester, SignedCall):
        address = check_call(
            requester,
            datanet_id=datanet.id,
            action="request-access",
            signers={requester.signer},
            detail=purpose,
        )
    else:
        address = as_account_address(requester, what="requester")
    return new_request(datanet._store, address, purpose)


def access_requests(datanet: Datanet, status: str | None = None) -> list[AccessRequest]:
    """Return the access requests (with ``status`` only, when given), oldest first."""
    where, params = ("WHERE status = ?", (status,)) if status else ("", ())
    rows = datanet._store.conn.execute(
        f"SELECT id, requester, purpose, status FROM access_requests {where} ORDER BY id", params
    )
    return [AccessRequest(int(i), Address(r), p, s) for i, r, p, s in rows]


def grant_for(datanet: Datanet, request_id: int, requester: Account | SignedCall) -> AccessGrant:
    """Return the stored grant of an approved request to its requester (or the owner).

    Raises:
        AccessDeniedError: Asked by someone else, or the request is not approved.
    """
    request = load_request(datanet._store, request_id)
    allowed = {request.requester, *([datanet.owner] if datanet.owner else [])}
    if isinstance(requester, SignedCall):
        check_call(requester, datanet_id=datanet.id, action=f"grant:{request_id}", signers=allowed)
    elif getattr(requester, "address", None) not in allowed:
        raise AccessDeniedError(f"the grant of request {request_id} is {request.requester}'s")
    if request.status != "approved":
        raise AccessDeniedError(f"access request {request_id} is {request.status}, not approved")
    row = datanet._store.conn.execute(
        "SELECT grantee, expires_at, signature FROM grants WHERE request_id = ?", (request_id,)
    ).fetchone()
    return AccessGrant(
        datanet_id=datanet.id,
        grantee=row[0],
        request_id=request_id,
        expires_at=int(row[1]),
        signature=to_hex(bytes(row[2])),
    )


def approve(
    datanet: Datanet,
    request_id: int,
    *,
    owner: Account | None,
    ttl_seconds: int,
    grant: AccessGrant | None = None,
) -> AccessGrant:
    """Approve a pending request and return the signed grant: signed here with ``owner``'s
    key, or signed elsewhere by the owner and passed as ``grant``."""
    if grant is not None:
        return _approve_signed(datanet, request_id, grant)
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ConfigError(f"ttl_seconds must be a positive int, got {ttl_seconds!r}")
    require_owner(datanet, owner)
    signer = cast(Account, owner)  # NOTE: require_owner refused anything else

    def sign(request: AccessRequest) -> AccessGrant:
        expires_at = int(time.time()) + ttl_seconds
        message = grant_message(datanet.id, request.requester, request.id, expires_at)
        return AccessGrant(
            datanet_id=datanet.id,
            grantee=request.requester,
            request_id=request.id,
            expires_at=expires_at,
            signature=to_hex(signer.sign_typed_data(message)),
        )

    grant = decide(datanet._store, request_id, wanted="pending", status="approved", sign=sign)
    return cast(AccessGrant, grant)  # decide returns what sign made


def _approve_signed(datanet: Datanet, request_id: int, grant: AccessGrant) -> AccessGrant:
    if grant.datanet_id != datanet.id or grant.request_id != request_id:
        raise AccessDeniedError(
            f"the grant is for request {grant.request_id} of datanet {grant.datanet_id}, not "
            f"request {request_id} of {datanet.id}"
        )
    if grant.expires_at <= time.time():
        raise ConfigError(f"the grant expired at unix time {grant.expires_at}; sign a new one")
    message = grant_message(datanet.id, grant.grantee, request_id, grant.expires_at)
    require_owner_signed(datanet, message, grant.signature)

    def same(request: AccessRequest) -> AccessGrant:
        if request.requester != grant.grantee:
            raise AccessDeniedError(
                f"the grant names {grant.grantee}; request {request_id} is {request.requester}'s"
            )
        return grant

    decide(datanet._store, request_id, wanted="pending", status="approved", sign=same)
    return grant


def deny(datanet: Datanet, request_id: int, *, owner: Owner) -> None:
    """Deny a pending request."""
    require_owner(datanet, owner, f"deny:{request_id}")
    decide(datanet._store, request_id, wanted="pending", status="denied")


def revoke(datanet: Datanet, request_id: int, *, owner: Owner) -> None:
    """Revoke an approved request."""
    require_owner(datanet, owner, f"revoke:{request_id}")
    decide(datanet._store, request_id, wanted="approved", status="revoked")
