"""The governance half of :class:`~openledger.data.Datanet`: validators, reviews,
reputation and the owner's access decisions (the logic lives in :mod:`.governance`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, cast

from openledger.crypto import Account
from openledger.data import governance
from openledger.data.access import AccessGrant, AccessRequest, check_grant, load_request
from openledger.data.receipts import Reputation, Review
from openledger.data.remote_signing import SignedCall, SignedReview
from openledger.data.signing import as_account_address
from openledger.data.store_api import DatanetStore
from openledger.exceptions import AccessDeniedError
from openledger.types import Address, Hash32

if TYPE_CHECKING:
    from openledger.data.datanet import Datanet

__all__ = ["GovernanceMethods"]


class GovernanceMethods:
    """Methods of :class:`~openledger.data.Datanet` that govern who reviews and who reads."""

    _store: DatanetStore
    id: Hash32
    visibility: str
    owner: Address | None
    grants: str

    def _datanet(self) -> Datanet:
        return cast("Datanet", self)

    # -- access checks ------------------------------------------------------------------

    def _check_read(self, grant: AccessGrant | None) -> None:
        if self.visibility == "private":
            check_grant(
                self._store,
                grant,
                datanet_id=self.id,
                owner=self.owner or "",
                bound=self.grants == "bound",
            )

    def require_read(self, grant: AccessGrant | None = None) -> None:
        """Raise unless ``grant`` (or none, for a public datanet) lets its holder read now.

        Raises:
            AccessDeniedError: Naming why: missing, foreign, expired, forged, revoked, or
                (``grants="bound"``) not held by its grantee.
        """
        self._check_read(grant)

    def can_read(self, grant: AccessGrant | None = None) -> bool:
        """Return whether ``grant`` (or none, for a public datanet) lets its holder read now."""
        try:
            self._check_read(grant)
        except AccessDeniedError:
            return False
        return True

    def _check_write(self, contributor: Address, grant: AccessGrant | None) -> None:
        # NOTE: a refused duplicate tells its sender the record is stored, so writing to a
        # private datanet takes the same grant as reading it (the owner needs none). The
        # grant must name the contributor, whose signature on the contribution proves it.
        if self.visibility != "private" or contributor == self.owner:
            return
        check_grant(self._store, grant, datanet_id=self.id, owner=self.owner or "")
        if grant is not None and grant.grantee != contributor:
            raise AccessDeniedError(
                f"the grant names {grant.grantee}, not the contributor {contributor}"
            )

    # -- governance: validators, reviews, reputation, access ----------------------------------

    def add_validator(
        self,
        validator: Account | str,
        *,
        owner: Account | None = None,
        signature: str | bytes | None = None,
    ) -> None:
        """Let ``validator`` review records; only the owner may do this.

        Args:
            validator: The account or address.
            owner: The owner's account, which signs ``Validator(datanet, validator)`` here.
            signature: Or that signature, made where the owner's key is (a service
                storing what an owner signed elsewhere).

        Raises:
            AccessDeniedError: ``owner`` is not the owner, or ``signature`` is not its.
        """
        address = as_account_address(validator, what="validator")
        governance.add_validator(self._datanet(), address, owner=owner, signature=signature)

    def validators(self) -> list[Address]:
        """Return the addresses allowed to review (the owner is always allowed).

        Only validators whose entry the owner signed count, so a validator added by editing
        the file is not one.
        """
        return governance.validators(self._datanet())

    def review(
        self, record_hash: str | bytes, *, accept: bool, reason: str, validator: Account
    ) -> None:
        """Accept or reject a stored record with a signed review; rejected records leave
        future snapshots and lower the contributor's reputation.

        Raises:
            AccessDeniedError: If ``validator`` is neither the owner nor a validator.
            DataNotFoundError: If the record is not stored.
        """
        governance.review(
            self._datanet(), record_hash, accept=accept, reason=reason, validator=validator
        )

    def add_review(self, signed: SignedReview) -> None:
        """Store a review signed elsewhere (``remote_signing.sign_review``), as
        :meth:`review` stores one signed here.

        Raises:
            AccessDeniedError: The signer is neither the owner nor a validator.
            SignatureError: Signed for another datanet, or not by its validator.
            NonceError: The validator already signed exactly this review (a replay).
            DataNotFoundError: The record is not stored.
        """
        governance.add_review(self._datanet(), signed)

    def reviews(
        self, record_hash: str | bytes | None = None, *, grant: AccessGrant | None = None
    ) -> list[Review]:
        """Return the signed reviews of one record (or of all records), oldest first.

        A reason may quote the record, so in a private datanet a caller without a valid
        ``grant`` gets each review with its ``reason`` and ``signature`` blanked (the
        signature would let a guessed reason be checked); who decided what stays visible.
        """
        found = governance.reviews(self._store.conn, record_hash)
        if self._datanet().can_read(grant):
            return found
        return [replace(r, reason="", signature="") for r in found]

    def flags(self, record_hash: str | bytes) -> list[tuple[str, str]]:
        """Return ``(kind, detail)`` flags of a record, e.g. near-duplicate matches."""
        return governance.flags(self._store.conn, record_hash)

    def reputation(self, contributor: Account | str) -> Reputation:
        """Return a contributor's record and rejection counts and score in this datanet."""
        address = as_account_address(contributor, what="contributor")
        return governance.reputation(self._store.conn, address)

    def contributors(self) -> dict[Address, int]:
        """Return the number of stored records per contributor."""
        rows = self._store.conn.execute(
            "SELECT contributor, COUNT(*) FROM records GROUP BY contributor ORDER BY contributor"
        )
        return {Address(a): int(n) for a, n in rows}

    def request_access(self, requester: Account | str | SignedCall, purpose: str) -> AccessRequest:
        """File a request to read this datanet; the owner approves or denies it.

        ``requester`` may be the requester's signed ``"request-access"`` call with the
        purpose as its detail (how a service knows who asks).
        """
        return governance.request_access(self._datanet(), requester, purpose)

    def access_request(self, request_id: int) -> AccessRequest:
        """Return one access request (its current status)."""
        return load_request(self._store, request_id)

    def access_requests(self, status: str | None = None) -> list[AccessRequest]:
        """Return every access request, or those with ``status`` (e.g. ``"pending"``)."""
        return governance.access_requests(self._datanet(), status)

    def grant_for(self, request_id: int, *, requester: Account | SignedCall) -> AccessGrant:
        """Return the grant of an approved request to its requester (its account, or its
        signed ``"grant:<id>"`` call), or to the owner.

        Raises:
            AccessDeniedError: Someone else asks, or the request is not approved.
        """
        return governance.grant_for(self._datanet(), request_id, requester)

    def approve(
        self,
        request_id: int,
        *,
        owner: Account | None = None,
        ttl_seconds: int = 30 * 24 * 3600,
        grant: AccessGrant | None = None,
    ) -> AccessGrant:
        """Approve a pending request, returning the owner-signed grant valid ``ttl_seconds``.

        ``grant`` instead of ``owner``: a grant the owner signed elsewhere for this request
        (its grantee must be the requester); it is checked and stored as it is.
        """
        return governance.approve(
            self._datanet(), request_id, owner=owner, ttl_seconds=ttl_seconds, grant=grant
        )

    def deny(self, request_id: int, *, owner: Account | SignedCall) -> None:
        """Deny a pending request (``owner``: its account, or its signed ``"deny:<id>"`` call)."""
        governance.deny(self._datanet(), request_id, owner=owner)

    def revoke(self, request_id: int, *, owner: Account | SignedCall) -> None:
        """Revoke an approved request; its grant stops working at once (``owner``: its
        account, or its signed ``"revoke:<id>"`` call)."""
        governance.revoke(self._datanet(), request_id, owner=owner)

    def _require_owner(self, owner: Account) -> None:
        governance.require_owner(self._datanet(), owner)
