"""The governance half of :class:`~openledger.data.RemoteDatanet`: validators, reviews,
reputation and access, each signed on this machine by the account that decides."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from openledger.crypto import Account, from_hex, to_hex
from openledger.data import wire
from openledger.data.access import AccessGrant, AccessRequest
from openledger.data.receipts import Reputation, Review
from openledger.data.remote_signing import SignedReview, sign_call, sign_review
from openledger.data.signing import as_account_address, grant_message, validator_message
from openledger.exceptions import ConfigError
from openledger.types import Address, Hash32

__all__ = ["RemoteGovernanceMethods"]


class RemoteGovernanceMethods:
    """Methods of :class:`~openledger.data.RemoteDatanet` that govern who reviews and reads."""

    id: Hash32

    _request: Callable[..., Any]  # NOTE: RemoteDatanet's: one request, refusals raised

    # -- governance ---------------------------------------------------------------------------

    def add_validator(
        self,
        validator: Account | str,
        *,
        owner: Account | None = None,
        signature: str | bytes | None = None,
    ) -> None:
        """Let ``validator`` review records: the owner signs the entry here (or passes a
        ``signature`` made elsewhere)."""
        address = as_account_address(validator, what="validator")
        if signature is None:
            if not isinstance(owner, Account):
                raise ConfigError("pass owner=Account (the owner signs) or signature=")
            signature = owner.sign_typed_data(validator_message(self.id, address))
        found = signature if isinstance(signature, str) else to_hex(signature)
        self._request("POST", "validators", body={"validator": address, "signature": found})

    def validators(self) -> list[Address]:
        """Return the addresses allowed to review (the owner always is)."""
        return [Address(a) for a in self._request("GET", "validators")["data"]]

    def review(
        self, record_hash: str | bytes, *, accept: bool, reason: str, validator: Account
    ) -> None:
        """Sign a review here and send it (see :meth:`Datanet.review`)."""
        signed = sign_review(
            self.id, record_hash, accept=accept, reason=reason, validator=validator
        )
        self.add_review(signed)

    def add_review(self, signed: SignedReview) -> None:
        """Send a review signed elsewhere."""
        self._request("POST", "reviews", body=json.loads(signed.model_dump_json()))

    def reviews(
        self, record_hash: str | bytes | None = None, *, grant: AccessGrant | None = None
    ) -> list[Review]:
        """Return the signed reviews (reasons blanked in a private datanet without a grant)."""
        params = None if record_hash is None else {"record_hash": hex32(record_hash)}
        found = self._request("GET", "reviews", params=params, grant=grant)
        return [wire.review_from_json(r) for r in found["data"]]

    def flags(
        self, record_hash: str | bytes, *, grant: AccessGrant | None = None
    ) -> list[tuple[str, str]]:
        """Return ``(kind, detail)`` flags of a record (a private datanet needs a grant)."""
        found = self._request("GET", f"flags/{hex32(record_hash)}", grant=grant)
        return [(f["kind"], f["detail"]) for f in found["data"]]

    def reputation(self, contributor: Account | str) -> Reputation:
        """Return a contributor's record and rejection counts in this datanet."""
        address = as_account_address(contributor, what="contributor")
        return wire.reputation_from_json(self._request("GET", f"reputation/{address}"))

    def contributors(self) -> dict[Address, int]:
        """Return the number of stored records per contributor."""
        found = self._request("GET", "contributors")["data"]
        return {Address(a): int(n) for a, n in found.items()}

    # -- access -----------------------------------------------------------------------------------

    def request_access(self, requester: Account, purpose: str) -> AccessRequest:
        """File a request to read this datanet, signed by ``requester`` here."""
        call = sign_call(self.id, "request-access", requester, detail=purpose)
        body = {"purpose": purpose}
        return wire.request_from_json(
            self._request("POST", "access-requests", body=body, call=call)
        )

    def access_request(self, request_id: int, *, caller: Account) -> AccessRequest:
        """Return one request; ``caller`` (its requester or the owner) signs the ask."""
        call = sign_call(self.id, f"request:{request_id}", caller)
        return wire.request_from_json(
            self._request("GET", f"access-requests/{request_id}", call=call)
        )

    def access_requests(self, status: str | None = None, *, owner: Account) -> list[AccessRequest]:
        """Return every access request (or those with ``status``); the owner asks."""
        call = sign_call(self.id, "access-requests", owner)
        found = [
            wire.request_from_json(r)
            for r in self._request("GET", "access-requests", call=call)["data"]
        ]
        return [r for r in found if status is None or r.status == status]

    def approve(
        self, request_id: int, *, owner: Account, ttl_seconds: int = 30 * 24 * 3600
    ) -> AccessGrant:
        """Sign a grant for a pending request here and have the service store it."""
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
            raise ConfigError(f"ttl_seconds must be a positive int, got {ttl_seconds!r}")
        request = self.access_request(request_id, caller=owner)
        expires_at = int(time.time()) + ttl_seconds
        message = grant_message(self.id, request.requester, request_id, expires_at)
        grant = AccessGrant(
            datanet_id=self.id,
            grantee=request.requester,
            request_id=request_id,
            expires_at=expires_at,
            signature=to_hex(owner.sign_typed_data(message)),
        )
        body = json.loads(grant.model_dump_json())
        self._request("POST", f"access-requests/{request_id}/approve", body=body)
        return grant

    def deny(self, request_id: int, *, owner: Account) -> None:
        """Deny a pending request (the owner signs the call here)."""
        call = sign_call(self.id, f"deny:{request_id}", owner)
        self._request("POST", f"access-requests/{request_id}/deny", call=call)

    def revoke(self, request_id: int, *, owner: Account) -> None:
        """Revoke an approved request; its grant stops working at once."""
        call = sign_call(self.id, f"revoke:{request_id}", owner)
        self._request("POST", f"access-requests/{request_id}/revoke", call=call)

    def grant_for(self, request_id: int, *, requester: Account) -> AccessGrant:
        """Fetch the grant of an approved request; its requester signs the ask here."""
        call = sign_call(self.id, f"grant:{request_id}", requester)
        found = self._request("GET", f"access-requests/{request_id}/grant", call=call)
        return AccessGrant.model_validate(found)


def hex32(value: str | bytes) -> str:
    """A record hash as ``0x``-hex (checked to be 32 bytes)."""
    return to_hex(from_hex(value, size=32, what="record_hash"))
