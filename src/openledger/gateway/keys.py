"""API keys: random secrets shown once, stored only as their sha256.

A key looks like ``olk-`` + 43 URL-safe characters (32 random bytes). The ledger keeps
``sha256(key)`` in hex, the payer account it bills and its role; a lost key cannot be
recovered, only replaced.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from openledger.crypto import keccak256, to_checksum_address
from openledger.types import Address

__all__ = ["ApiKey", "KeyRole", "hash_api_key", "new_api_key"]

KEY_PREFIX = "olk-"
KeyRole = Literal["user", "admin"]
"""``"user"`` calls the OpenAI endpoints; ``"admin"`` also the adapter endpoints."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What the ledger knows of an API key (never the key itself).

    Attributes:
        key_id: A short public id (the first characters of its hash) for listings and logs.
        key_hash: ``sha256(key)`` in hex.
        payer: The account its requests are billed to.
        role: ``"user"`` or ``"admin"``.
        name: A label given at creation.
        created_at: Unix seconds.
        revoked: Whether the key was revoked.
    """

    key_id: str
    key_hash: str
    payer: Address
    role: KeyRole
    name: str
    created_at: int
    revoked: bool = False


def new_api_key() -> str:
    """Return a fresh random API key (32 bytes from the OS's secure source)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Return ``sha256(key)`` in hex: the form the ledger stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id_of(key_hash: str) -> str:
    """The public id of a key: the first 12 hex digits of its hash."""
    return key_hash[:12]


def default_payer(key_hash: str) -> Address:
    """A payer account for a key created without one: an address derived from its hash.

    It names the key's account in receipts; give a real address to bill someone on chain.
    """
    return to_checksum_address("0x" + keccak256(bytes.fromhex(key_hash))[-20:].hex())


def same_hash(left: str, right: str) -> bool:
    """Compare two key hashes in constant time."""
    return hmac.compare_digest(left.encode(), right.encode())
