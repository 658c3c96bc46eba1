"""Access requests and signed, expiring access grants for private datanets.

A requester asks (``request_access``), the owner approves with a signature over
``AccessGrant(datanet, grantee, requestId, expiresAt)`` or denies. A grant is checked by
signature, datanet, expiry and the request's current status (so a revoked grant stops
working even though its signature stays valid).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from openledger.crypto import Account, TypedData
from openledger.data.remote_signing import SignedCall, check_call
from openledger.data.signing import (
    HexAddress,
    HexHash,
    HexSignature,
    grant_message,
    read_message,
    signer_of,
)
from openledger.data.store_api import Connection, DatanetStore
from openledger.exceptions import (
    AccessDeniedError,
    ConfigError,
    DataNotFoundError,
    SignatureError,
)
from openledger.types import Address

__all__ = ["AccessGrant", "AccessRequest", "check_grant", "decide", "load_request", "new_request"]


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A request to read a private datanet.

    Attributes:
        id: Request id within the datanet.
        requester: Who asks.
        purpose: What for, in the requester's words.
        status: ``"pending"``, ``"approved"``, ``"denied"`` or ``"revoked"``.
    """

    id: int
    requester: Address
    purpose: str
    status: str


class AccessGrant(BaseModel):
    """An owner-signed permission to read a datanet until ``expires_at``.

    Attributes:
        datanet_id: The datanet.
        grantee: Who may read.
        request_id: The request it answers.
        expires_at: Unix time (seconds) after which it is void.
        signature: The owner's EIP-712 signature, ``0x``-hex.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    datanet_id: HexHash
    grantee: HexAddress
    request_id: int = Field(ge=1)
    expires_at: int = Field(ge=0)
    signature: HexSignature
    # NOTE: the reader's key stays in memory only: never serialised with the grant.
    _reader: Account | SignedCall | None = PrivateAttr(default=None)

    def bind(self, reader: Account | SignedCall) -> AccessGrant:
        """Return this grant held by ``reader``, who must be its grantee.

        A datanet created with ``grants="bound"`` reads only bound grants: each read has
        the reader sign a fresh challenge, so the grant alone (copied, leaked, logged) reads
        nothing without the grantee's key. A datanet service, which never holds the key,
        binds the grant to the grantee's fresh signed ``"read"`` call instead (checked at
        each read like the challenge: the grantee's, for this datanet, within
        :data:`~openledger.data.remote_signing.CALL_TTL`).

        Raises:
            AccessDeniedError: If ``reader`` is not an :class:`Account` (or a signed call)
                of the grantee's address.
        """
        address = reader.signer if isinstance(reader, SignedCall) else None
        if isinstance(reader, Account):
            address = reader.address
        if address != self.grantee:
            raise AccessDeniedError(
                f"the grant names {self.grantee}; bind it to that account's key, not "
                f"{address or type(reader).__name__}"
            )
        bound = self.model_copy()
        bound._reader = reader
        return bound


def new_request(store: DatanetStore, requester: Address, purpose: str) -> AccessRequest:
    """Store a pending request and return it.

    Filing the same purpose again while it is pending returns that request: a signed
    ``request-access`` call is good for minutes, and a copy of it sent again (a retry, or
    someone replaying it) must not pile up requests in the requester's name.
    """
    if not purpose.strip():
        raise ConfigError("purpose must say what the data is for; got an empty string")
    with store.write() as conn:
        found = conn.execute(
            "SELECT id FROM access_requests WHERE requester = ? AND purpose = ?"
            " AND status = 'pending' ORDER BY id LIMIT 1",
            (requester, purpose),
        ).fetchone()
        if found is not None:
            return AccessRequest(int(found[0]), requester, purpose, "pending")
        rows = conn.execute(
            "INSERT INTO access_requests (requester, purpose, created_at) VALUES (?, ?, ?)"
            " RETURNING id",
            (requester, purpose, time.time()),
        ).fetchall()
    return AccessRequest(int(rows[0][0]), requester, purpose, "pending")


def load_request(store: DatanetStore | Connection, request_id: int) -> AccessRequest:
    """Return one request (``store`` may be a connection inside a transaction).

    Raises:
        DataNotFoundError: If there is no such request.
    """
    conn = store.conn if isinstance(store, DatanetStore) else store
    row = conn.execute(
        "SELECT id, requester, purpose, status FROM access_requests WHERE id = ?", (request_id,)
    ).fetchone()
    if row is None:
        raise DataNotFoundError(f"no access request with id {request_id}")
    return AccessRequest(int(row[0]), Address(row[1]), row[2], row[3])


def decide(
    store: DatanetStore,
    request_id: int,
    *,
    wanted: str,
    status: str,
    sign: Callable[[AccessRequest], AccessGrant] | None = None,
) -> AccessGrant | None:
    """Move a request from ``wanted`` to ``status`` (storing a grant when approving).

    The status is checked and changed in one write transaction, so two owners' processes
    deciding the same request at once cannot both succeed.

    Args:
        store: The datanet's store.
        request_id: The request.
        wanted: The status it must have now.
        status: The status it gets.
        sign: When approving: makes the owner-signed grant for the request.

    Returns:
        The stored grant, or ``None`` when not approving.

    Raises:
        DataNotFoundError: If there is no such request.
        ConfigError: If the request's status is not ``wanted``.
    """
    with store.write() as conn:
        request = load_request(conn, request_id)
        if request.status != wanted:
            raise ConfigError(f"access request {request_id} is {request.status}, not {wanted}")
        grant = None if sign is None else sign(request)
        conn.execute(
            "UPDATE access_requests SET status = ?, decided_at = ? WHERE id = ?",
            (status, time.time(), request_id),
        )
        if grant is not None:
            conn.execute(
                "INSERT INTO grants VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE"
                " SET grantee = excluded.grantee, expires_at = excluded.expires_at,"
                " signature = excluded.signature",
                (request_id, grant.grantee, grant.expires_at, bytes.fromhex(grant.signature[2:])),
            )
    return grant


def check_grant(
    store: DatanetStore,
    grant: AccessGrant | None,
    *,
    datanet_id: str,
    owner: str,
    now: float | None = None,
    bound: bool = False,
) -> None:
    """Raise unless ``grant`` lets its holder read this datanet now.

    Args:
        store: The datanet's store (for the request's current status).
        grant: The grant presented.
        datanet_id: The datanet.
        owner: The owner's address, who must have signed the grant.
        now: The time to judge expiry by (default: now).
        bound: Require the grantee's key: the grant must be bound (``grant.bind``) and its
            reader signs a fresh challenge.

    Raises:
        AccessDeniedError: Naming what is wrong: missing, foreign, expired, forged,
            revoked, or not held by its grantee.
    """
    if grant is None:
        raise AccessDeniedError(
            "this datanet is private: pass grant=AccessGrant (request_access, then the "
            "owner's approve) to read its records"
        )
    if grant.datanet_id != datanet_id:
        raise AccessDeniedError(f"the grant is for datanet {grant.datanet_id}, not {datanet_id}")
    moment = time.time() if now is None else now
    if grant.expires_at <= moment:
        raise AccessDeniedError(f"the grant expired at unix time {grant.expires_at}; ask again")
    data = grant_message(datanet_id, grant.grantee, grant.request_id, grant.expires_at)
    if _signer(data, grant.signature) != owner:
        raise AccessDeniedError("the grant is not signed by this datanet's owner")
    if bound:
        _check_holder(grant, datanet_id, int(moment))
    status = load_request(store, grant.request_id).status
    if status != "approved":
        raise AccessDeniedError(f"access request {grant.request_id} is {status}, not approved")


def _signer(data: TypedData, signature: str | bytes) -> str | None:
    try:
        return signer_of(data, signature, what="grant")
    except SignatureError:
        return None


def _check_holder(grant: AccessGrant, datanet_id: str, now: int) -> None:
    reader = grant._reader
    if reader is None:
        raise AccessDeniedError(
            "this datanet reads only grants held by their grantee: pass "
            "grant=grant.bind(grantee_account)"
        )
    if isinstance(reader, SignedCall):
        check_call(reader, datanet_id=datanet_id, action="read", signers={grant.grantee}, now=now)
        return
    challenge = read_message(datanet_id, grant.request_id, now, os.urandom(32))
    if _signer(challenge, reader.sign_typed_data(challenge)) != grant.grantee:
        raise AccessDeniedError(f"the reader could not prove it holds {grant.grantee}'s key")
