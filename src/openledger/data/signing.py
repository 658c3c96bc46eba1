"""EIP-712 messages of a datanet: contributions, reviews and access grants.

All three share the domain ``{name: "OpenLedger Datanet", version: "1"}`` and carry the
datanet id in the message, so a signature made for one datanet never verifies on another.
A contribution signs the root of a ``StandardMerkleTree`` over ``(uint256 position, bytes32
recordHash)`` leaves: it fixes the records and their order, and lets anyone prove on chain
that one record was part of a signed contribution.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from openledger.crypto import (
    Account,
    TypedData,
    eip712_domain,
    from_hex,
    keccak256,
    recover_typed_data,
    root_of_leaves,
    to_checksum_address,
    to_hex,
    typed_data,
)
from openledger.exceptions import ConfigError, CryptoError, SignatureError
from openledger.types import Address, Hash32

__all__ = [
    "CONTRIBUTION_LEAF_ENCODING",
    "DEFAULT_CONTRIBUTION_TTL",
    "DOMAIN",
    "SignedContribution",
    "as_account_address",
    "contribution_message",
    "grant_message",
    "read_message",
    "records_root",
    "review_message",
    "sign_contribution",
    "signer_of",
    "validator_message",
]

DEFAULT_CONTRIBUTION_TTL = 3600
"""Seconds a contribution signature stays valid when no deadline is given."""

DOMAIN = eip712_domain("OpenLedger Datanet", "1")
"""The EIP-712 domain of every datanet signature."""

CONTRIBUTION_LEAF_ENCODING = ("uint256", "bytes32")
"""Leaves ``(position, recordHash)`` of the tree whose root a contributor signs."""

_CONTRIBUTION = {
    "Contribution": [
        ("datanet", "bytes32"),
        ("recordsRoot", "bytes32"),
        ("count", "uint256"),
        ("nonce", "uint256"),
    ]
}
_CONTRIBUTION_WITH_DEADLINE = {
    "Contribution": [
        ("datanet", "bytes32"),
        ("recordsRoot", "bytes32"),
        ("count", "uint256"),
        ("nonce", "uint256"),
        ("deadline", "uint64"),
    ]
}
_READ = {
    "ReadAccess": [
        ("datanet", "bytes32"),
        ("requestId", "uint256"),
        ("at", "uint64"),
        ("challenge", "bytes32"),
    ]
}
_VALIDATOR = {"Validator": [("datanet", "bytes32"), ("validator", "address")]}
_REVIEW = {
    "Review": [
        ("datanet", "bytes32"),
        ("recordHash", "bytes32"),
        ("accept", "bool"),
        ("reason", "string"),
    ]
}
_GRANT = {
    "AccessGrant": [
        ("datanet", "bytes32"),
        ("grantee", "address"),
        ("requestId", "uint256"),
        ("expiresAt", "uint64"),
    ]
}


def _hash32(value: str) -> str:
    try:
        return to_hex(from_hex(value, size=32, what="hash"))
    except CryptoError as exc:
        raise ValueError(str(exc)) from None


def _address(value: str) -> str:
    try:
        return to_checksum_address(value)
    except CryptoError as exc:
        raise ValueError(str(exc)) from None


def _signature(value: str) -> str:
    try:
        return to_hex(from_hex(value, size=65, what="signature"))
    except CryptoError as exc:
        raise ValueError(str(exc)) from None


HexHash = Annotated[str, AfterValidator(_hash32)]
HexAddress = Annotated[str, AfterValidator(_address)]
HexSignature = Annotated[str, AfterValidator(_signature)]


class SignedContribution(BaseModel):
    """A contribution signed by its contributor, possibly on another machine.

    Attributes:
        datanet_id: The datanet it was signed for.
        contributor: Checksummed address of the signer.
        nonce: The contributor's next nonce on that datanet (``Datanet.next_nonce``).
        count: Number of records.
        records_root: Root over ``(position, recordHash)`` leaves, see :func:`records_root`.
        signature: 65-byte EIP-712 signature as ``0x``-hex.
        deadline: Unix time (seconds) after which the store refuses it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    datanet_id: HexHash
    contributor: HexAddress
    nonce: int = Field(ge=0)
    count: int = Field(ge=1)
    records_root: HexHash
    signature: HexSignature
    deadline: int = Field(ge=0)


def records_root(record_hashes: Sequence[bytes]) -> Hash32:
    """Return the root over ``(position, recordHash)`` leaves of a contribution.

    Raises:
        SignatureError: If there are no records.
    """
    if not record_hashes:
        raise SignatureError("a contribution needs at least one record")
    # NOTE: abi.encode(uint256 i, bytes32 h) is i as a 32-byte big-endian word, then h.
    leaves = [keccak256(keccak256(i.to_bytes(32, "big") + h)) for i, h in enumerate(record_hashes)]
    return Hash32(to_hex(root_of_leaves(leaves)))


def contribution_message(
    datanet_id: str, root: str, count: int, nonce: int, deadline: int | None = None
) -> TypedData:
    """Return the EIP-712 payload a contributor signs.

    ``deadline`` (unix seconds) is part of every new signature; ``None`` gives the message
    of contributions signed before deadlines existed (audits still verify those).
    """
    message: dict[str, Any] = {
        "datanet": from_hex(datanet_id, size=32),
        "recordsRoot": from_hex(root, size=32),
        "count": count,
        "nonce": nonce,
    }
    if deadline is None:
        return typed_data(DOMAIN, _CONTRIBUTION, "Contribution", message)
    message["deadline"] = deadline
    return typed_data(DOMAIN, _CONTRIBUTION_WITH_DEADLINE, "Contribution", message)


def read_message(datanet_id: str, request_id: int, at: int, challenge: bytes) -> TypedData:
    """Return the EIP-712 challenge a grantee signs to prove it holds its key at a read."""
    message = {
        "datanet": from_hex(datanet_id, size=32),
        "requestId": request_id,
        "at": at,
        "challenge": challenge,
    }
    return typed_data(DOMAIN, _READ, "ReadAccess", message)


def validator_message(datanet_id: str, validator: str) -> TypedData:
    """Return the EIP-712 payload an owner signs to let ``validator`` review records."""
    message = {
        "datanet": from_hex(datanet_id, size=32),
        "validator": to_checksum_address(validator),
    }
    return typed_data(DOMAIN, _VALIDATOR, "Validator", message)


def review_message(datanet_id: str, record_hash: str, accept: bool, reason: str) -> TypedData:
    """Return the EIP-712 payload a validator signs to accept or reject a record."""
    message = {
        "datanet": from_hex(datanet_id, size=32),
        "recordHash": from_hex(record_hash, size=32),
        "accept": accept,
        "reason": reason,
    }
    return typed_data(DOMAIN, _REVIEW, "Review", message)


def grant_message(datanet_id: str, grantee: str, request_id: int, expires_at: int) -> TypedData:
    """Return the EIP-712 payload an owner signs to grant read access until ``expires_at``."""
    message = {
        "datanet": from_hex(datanet_id, size=32),
        "grantee": to_checksum_address(grantee),
        "requestId": request_id,
        "expiresAt": expires_at,
    }
    return typed_data(DOMAIN, _GRANT, "AccessGrant", message)


def sign_contribution(
    record_hashes: Sequence[bytes],
    *,
    datanet_id: str,
    contributor: Account,
    nonce: int,
    root: str | None = None,
    deadline: int | None = None,
) -> SignedContribution:
    """Sign a contribution of records (given by their hashes) for a datanet.

    Args:
        record_hashes: 32-byte record hashes, in contribution order.
        datanet_id: ``Datanet.id`` of the target.
        contributor: The signing account.
        nonce: ``Datanet.next_nonce(contributor.address)``.
        root: :func:`records_root` of ``record_hashes`` when the caller has it already.
        deadline: Unix time (seconds) after which the datanet refuses the signature;
            default one hour from now (:data:`DEFAULT_CONTRIBUTION_TTL`).

    Returns:
        The signed contribution, to pass as ``Datanet.contribute(records, signed=...)``.
    """
    root = root or records_root(record_hashes)
    if deadline is None:
        deadline = int(time.time()) + DEFAULT_CONTRIBUTION_TTL
    data = contribution_message(datanet_id, root, len(record_hashes), nonce, deadline)
    return SignedContribution(
        datanet_id=datanet_id,
        contributor=contributor.address,
        nonce=nonce,
        count=len(record_hashes),
        records_root=root,
        signature=to_hex(contributor.sign_typed_data(data)),
        deadline=deadline,
    )


def signer_of(data: TypedData, signature: str | bytes, *, what: str) -> Address:
    """Recover the signer of ``data``, turning malformed signatures into SignatureError."""
    try:
        return recover_typed_data(data, signature)
    except CryptoError as exc:
        raise SignatureError(f"{what} signature is invalid: {exc}") from None


def as_account_address(value: Any, *, what: str) -> Address:
    """Return the checksummed address of an :class:`Account` or an address string."""
    if isinstance(value, Account):
        return value.address
    try:
        return to_checksum_address(value, what=what)
    except CryptoError as exc:
        raise ConfigError(f"{what}: {exc}") from None
