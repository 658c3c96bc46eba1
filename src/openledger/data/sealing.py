"""Optional encryption at rest of record payloads (AES-256-GCM, a key the owner holds).

A sealed payload is ``nonce (12 bytes) || ciphertext || tag (16 bytes)``; the associated
data is the datanet id and the record hash, so a payload moved to another row or another
datanet no longer opens. Record hashes, contributors, signatures, snapshots and proofs stay
in clear: they are what others verify without reading the records.

The store keeps ``key_check = keccak256("openledger.datanet.key/1" || key)`` so that a
wrong key is refused when the datanet is opened rather than at the first read.
"""

from __future__ import annotations

import hmac
import os

from Crypto.Cipher import AES

from openledger.crypto import from_hex, keccak256, to_hex
from openledger.exceptions import AccessDeniedError, ConfigError, StoreError

__all__ = ["CIPHER", "PayloadCipher", "key_check"]

CIPHER = "aes-256-gcm"
"""The ``encryption`` setting of a datanet whose payloads are sealed."""

_NONCE = 12
_TAG = 16


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        key = from_hex(key, size=32, what="encryption_key")
    if not isinstance(key, bytes) or len(key) != 32:
        raise ConfigError("encryption_key must be 32 bytes (or 0x-hex of 32 bytes)")
    return key


def key_check(key: bytes | str) -> str:
    """Return the value stored to recognise ``key`` (it reveals nothing about the key)."""
    return to_hex(keccak256(b"openledger.datanet.key/1" + _key_bytes(key)))


class PayloadCipher:
    """Seals and opens the payloads of one datanet.

    Args:
        key: The 32-byte key (or its ``0x``-hex).
        datanet_id: The datanet, bound into every payload.
        expected_check: The stored ``key_check``; a different key is refused.

    Raises:
        ConfigError: The key is not 32 bytes.
        AccessDeniedError: The key is not this datanet's.
    """

    def __init__(self, key: bytes | str, datanet_id: str, expected_check: str) -> None:
        self._key = _key_bytes(key)
        if not hmac.compare_digest(key_check(self._key), expected_check):
            raise AccessDeniedError("encryption_key is not this datanet's key")
        self._datanet = from_hex(datanet_id, size=32)

    def seal(self, payload: bytes, record_hash: bytes) -> bytes:
        """Return the sealed form of one canonical payload."""
        nonce = os.urandom(_NONCE)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=nonce, mac_len=_TAG)
        cipher.update(self._datanet + record_hash)
        body, tag = cipher.encrypt_and_digest(payload)
        return nonce + body + tag

    def open(self, sealed: bytes, record_hash: bytes) -> bytes:
        """Return the payload of a sealed one.

        Raises:
            StoreError: The payload was altered, moved from another row, or sealed with
                another key.
        """
        sealed = bytes(sealed)
        cipher = AES.new(self._key, AES.MODE_GCM, nonce=sealed[:_NONCE], mac_len=_TAG)
        cipher.update(self._datanet + record_hash)
        try:
            return cipher.decrypt_and_verify(sealed[_NONCE:-_TAG], sealed[-_TAG:])
        except ValueError:
            raise StoreError(
                f"the payload of record {to_hex(record_hash)} does not open: altered, moved "
                "from another row, or sealed with another key"
            ) from None
