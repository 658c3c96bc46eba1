"""Validators, signed reviews, contributor reputation, and the owner's access decisions."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

from openledger.crypto import Account, from_hex, to_hex
from openledger.data.access import AccessGrant, AccessRequest, decide, new_request
from openledger.data.receipts import Reputation, Review
from openledger.data.signing import (
    as_account_address,
    grant_message,
    review_message,
    signer_of,
    validator_message,
)
from openledger.data.store_api import Connection
from openledger.exceptions import AccessDeniedError, ConfigError, DataNotFoundError, SignatureError
from openledger.types import Address, Hash32

if TYPE_CHECKING:
    from openledger.data.datanet import Datanet

__all__ = [
    "add_validator",
    "approve",
    "deny",
    "flags",
    "reputation",
    "request_access",
    "require_owner",
    "review",
    "reviews",
    "revoke",
    "signed_validators",
    "validators",
]


def require_owner(datanet: Datanet, owner: Account) -> None:
    """Raise unless ``owner`` is the datanet's owner."""
    if datanet.owner is None:
        raise AccessDeniedError(
            f"datanet {datanet.name!r} has no owner; create it with owner=Account to govern it"
        )
    if not isinstance(owner, Account) or owner.address != datanet.owner:
        raise AccessDeniedError(f"only the owner {datanet.owner} may do this")


def add_validator(datanet: Datanet, address: Address, *, owner: Account) -> None:
    """Store ``address`` as a validator with the owner's signature (idempotent)."""
    require_owner(datanet, owner)
    signature = owner.sign_typed_data(validator_message(datanet.id, address))
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


def review(
    datanet: Datanet, record_hash: str | bytes, *, accept: bool, reason: str, validator: Account
) -> None:
    """Sign and store a review; the latest review decides the record's status."""
    store = datanet._store
    allowed = {*validators(datanet), *([datanet.owner] if datanet.owner else [])}
    if not isinstance(validator, Account) or validator.address not in allowed:
        raise AccessDeniedError(
            "validator is not allowed to review this datanet; the owner adds validators "
            "with add_validator"
        )
    if not reason.strip():
        raise ConfigError("reason must explain the decision; got an empty string")
    digest = from_hex(record_hash, size=32, what="record_hash")
    signature = validator.sign_typed_data(
        review_message(datanet.id, to_hex(digest), accept, reason)
    )
    with store.write() as conn:
        row = conn.execute("SELECT id FROM records WHERE hash = ?", (digest,)).fetchone()
        if row is None:
            raise DataNotFoundError(f"no record with hash {to_hex(digest)} to review")
        conn.execute(
            "INSERT INTO reviews (record_id, validator, accept, reason, signature, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (row[0], validator.address, int(accept), reason, signature, time.time()),
        )
        status = "accepted" if accept else "rejected"
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


def request_access(datanet: Datanet, requester: Account | str, purpose: str) -> AccessRequest:
    """File a pending access request."""
    if datanet.visibility == "public":
        raise ConfigError(f"datanet {datanet.name!r} is public; reading it needs no grant")
    address = as_account_address(requester, what="requester")
    return new_request(datanet._store, address, purpose)


def approve(datanet: Datanet, request_id: int, *, owner: Account, ttl_seconds: int) -> AccessGrant:
    """Approve a pending request and return the signed grant."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ConfigError(f"ttl_seconds must be a positive int, got {ttl_seconds!r}")
    require_owner(datanet, owner)

    def sign(request: AccessRequest) -> AccessGrant:
        expires_at = int(time.time()) + ttl_seconds
        message = grant_message(datanet.id, request.requester, request.id, expires_at)
        return AccessGrant(
            datanet_id=datanet.id,
            grantee=request.requester,
            request_id=request.id,
            expires_at=expires_at,
            signature=to_hex(owner.sign_typed_data(message)),
        )

    grant = decide(datanet._store, request_id, wanted="pending", status="approved", sign=sign)
    return cast(AccessGrant, grant)  # decide returns what sign made


def deny(datanet: Datanet, request_id: int, *, owner: Account) -> None:
    """Deny a pending request."""
    require_owner(datanet, owner)
    decide(datanet._store, request_id, wanted="pending", status="denied")


def revoke(datanet: Datanet, request_id: int, *, owner: Account) -> None:
    """Revoke an approved request."""
    require_owner(datanet, owner)
    decide(datanet._store, request_id, wanted="approved", status="revoked")
