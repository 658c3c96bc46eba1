"""The governance half of :class:`~openledger.data.Datanet`: validators, reviews,
reputation and the owner's access decisions (the logic lives in :mod:`.governance`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, cast

from openledger.crypto import Account
from openledger.data import governance
from openledger.data.access import AccessGrant, AccessRequest, check_grant, load_request
from openledger.data.receipts import Reputation, Review
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

    def add_validator(self, validator: Account | str, *, owner: Account) -> None:
        """Let ``validator`` review records; only the owner may do this."""
        address = as_account_address(validator, what="validator")
        governance.add_validator(self._datanet(), address, owner=owner)

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

    def request_access(self, requester: Account | str, purpose: str) -> AccessRequest:
        """File a request to read this datanet; the owner approves or denies it."""
        return governance.request_access(self._datanet(), requester, purpose)

    def access_request(self, request_id: int) -> AccessRequest:
        """Return one access request (its current status)."""
        return load_request(self._store, request_id)

    def approve(
        self, request_id: int, *, owner: Account, ttl_seconds: int = 30 * 24 * 3600
    ) -> AccessGrant:
        """Approve a pending request, returning the owner-signed grant valid ``ttl_seconds``."""
        return governance.approve(self._datanet(), request_id, owner=owner, ttl_seconds=ttl_seconds)

    def deny(self, request_id: int, *, owner: Account) -> None:
        """Deny a pending request."""
        governance.deny(self._datanet(), request_id, owner=owner)

    def revoke(self, request_id: int, *, owner: Account) -> None:
        """Revoke an approved request; its grant stops working at once."""
        governance.revoke(self._datanet(), request_id, owner=owner)

    def _require_owner(self, owner: Account) -> None:
        governance.require_owner(self._datanet(), owner)
