"""Ethereum accounts and EIP-712 typed-data signing.

:class:`Account` is the one key holder the layers share: ``openledger.data`` signs
contributions, reviews and access grants with it, and ``openledger.chain`` re-exports it
to send transactions. Typed data follows EIP-712; a signature is 65 bytes ``r || s || v``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eth_account import Account as _EthAccount
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount

from openledger.crypto.hashing import from_hex, keccak256, to_checksum_address
from openledger.exceptions import CryptoError
from openledger.types import Address

__all__ = [
    "Account",
    "TypedData",
    "eip712_domain",
    "recover_typed_data",
    "typed_data",
    "typed_data_digest",
]

TypedData = dict[str, Any]
"""A full EIP-712 payload: ``types``, ``primaryType``, ``domain`` and ``message``."""

_DOMAIN_FIELDS = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
    ("salt", "bytes32"),
)


def eip712_domain(
    name: str,
    version: str,
    *,
    chain_id: int | None = None,
    verifying_contract: str | None = None,
    salt: bytes | None = None,
) -> dict[str, Any]:
    """Build an EIP-712 domain, leaving out the fields that are ``None``.

    Args:
        name: Human-readable signing domain, e.g. ``"OpenLedger Datanet"``.
        version: Domain version, e.g. ``"1"``.
        chain_id: EVM chain id, when signatures are checked on chain.
        verifying_contract: Address of the contract that checks them.
        salt: 32 bytes that separate otherwise equal domains.

    Returns:
        The domain as a dict with EIP-712 field names.
    """
    domain: dict[str, Any] = {"name": name, "version": version}
    if chain_id is not None:
        domain["chainId"] = chain_id
    if verifying_contract is not None:
        domain["verifyingContract"] = to_checksum_address(verifying_contract)
    if salt is not None:
        domain["salt"] = from_hex(salt, size=32, what="salt")
    return domain


def typed_data(
    domain: Mapping[str, Any],
    types: Mapping[str, Sequence[tuple[str, str]]],
    primary_type: str,
    message: Mapping[str, Any],
) -> TypedData:
    """Assemble a full EIP-712 payload.

    Args:
        domain: From :func:`eip712_domain`.
        types: Struct types as ``{"Name": [(field, abi_type), ...]}``, without
            ``EIP712Domain`` (derived from ``domain``).
        primary_type: The struct being signed.
        message: Its values.

    Returns:
        The payload, accepted by :func:`typed_data_digest` and :meth:`Account.sign_typed_data`.
    """
    domain_type = [{"name": n, "type": t} for n, t in _DOMAIN_FIELDS if n in domain]
    all_types: dict[str, list[dict[str, str]]] = {"EIP712Domain": domain_type}
    for struct, fields in types.items():
        all_types[struct] = [{"name": n, "type": t} for n, t in fields]
    return {
        "types": all_types,
        "primaryType": primary_type,
        "domain": dict(domain),
        "message": dict(message),
    }


def _signable(data: TypedData) -> SignableMessage:
    try:
        return encode_typed_data(full_message=data)
    except Exception as exc:  # eth_account raises several unrelated types here
        raise CryptoError(f"typed data is malformed: {exc}") from exc


def typed_data_digest(data: TypedData) -> bytes:
    """Return the 32-byte EIP-712 digest ``keccak256(0x1901 || domainSep || structHash)``."""
    message = _signable(data)
    return keccak256(b"\x19" + message.version + message.header + message.body)


def recover_typed_data(data: TypedData, signature: bytes | str) -> Address:
    """Return the address that produced ``signature`` over ``data``.

    Args:
        data: The full EIP-712 payload.
        signature: 65 bytes ``r || s || v`` (or ``0x``-hex).

    Returns:
        The checksummed signer address.

    Raises:
        CryptoError: If the signature is malformed or cannot be recovered.
    """
    raw = from_hex(signature, size=65, what="signature")
    try:
        signer = _EthAccount.recover_message(_signable(data), signature=raw)
    except CryptoError:
        raise
    except Exception as exc:  # BadSignature, ValueError from eth_keys
        raise CryptoError(f"signature cannot be recovered: {exc}") from exc
    return to_checksum_address(signer)


class Account:
    """An Ethereum account with its private key, able to sign EIP-712 typed data.

    Example:
        >>> alice = Account.create()
        >>> alice.address.startswith("0x")
        True
    """

    __slots__ = ("_local",)

    def __init__(self, local: LocalAccount) -> None:
        self._local = local

    @classmethod
    def create(cls) -> Account:
        """Create an account with a fresh random key (from the OS's secure source)."""
        return cls(_EthAccount.create())

    @classmethod
    def from_key(cls, private_key: bytes | str) -> Account:
        """Load an account from a 32-byte private key (raw or ``0x``-hex).

        Raises:
            CryptoError: If the key is malformed or out of range.
        """
        raw = from_hex(private_key, size=32, what="private_key")
        try:
            return cls(_EthAccount.from_key(raw))
        except Exception as exc:  # eth_keys ValidationError for 0 or >= curve order
            raise CryptoError(f"private_key is not a valid secp256k1 key: {exc}") from exc

    @property
    def address(self) -> Address:
        """The EIP-55 checksummed address."""
        return Address(self._local.address)

    @property
    def key(self) -> bytes:
        """The 32-byte private key. Keep it secret."""
        return bytes(self._local.key)

    @property
    def local_account(self) -> LocalAccount:
        """The underlying ``eth_account`` signer (for web3 middleware and transactions)."""
        return self._local

    def sign_typed_data(self, data: TypedData) -> bytes:
        """Sign a full EIP-712 payload (see :func:`typed_data`).

        Returns:
            The 65-byte signature ``r || s || v``.
        """
        signed = self._local.sign_message(_signable(data))
        return bytes(signed.signature)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Account) and other.address == self.address

    def __hash__(self) -> int:
        return hash(self.address)

    def __repr__(self) -> str:
        return f"Account(address={self.address!r})"
