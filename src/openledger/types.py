"""Small value types shared by the layers.

Hashes are 32-byte values written as ``0x`` + 64 lowercase hex digits; addresses are
EIP-55 checksummed ``0x`` strings; token amounts are integers in wei. The ``NewType`` s
below cost nothing at run time and let mypy keep them apart; the ``to_*`` helpers
validate and normalise untrusted input into them.
"""

from __future__ import annotations

import re
from typing import NewType

from openledger.exceptions import ConfigError

__all__ = [
    "Address",
    "Hash32",
    "Wei",
    "to_hash32",
    "to_wei",
]

Hash32 = NewType("Hash32", str)
"""A 32-byte hash as ``0x`` + 64 lowercase hex digits."""

Address = NewType("Address", str)
"""An EIP-55 checksummed 20-byte Ethereum address."""

Wei = NewType("Wei", int)
"""A non-negative token amount in the smallest unit (wei)."""

_HEX64 = re.compile(r"0x[0-9a-fA-F]{64}")


def to_hash32(value: bytes | str, *, what: str = "hash") -> Hash32:
    """Normalise 32 raw bytes or a ``0x``-hex string into a :data:`Hash32`.

    Args:
        value: 32 bytes, or ``0x`` followed by 64 hex digits (any case).
        what: Name used in the error message, e.g. ``"record_hash"``.

    Returns:
        The lowercase ``0x``-hex form.

    Raises:
        ConfigError: If ``value`` is not 32 bytes or not well-formed hex.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) != 32:
            raise ConfigError(f"{what} must be 32 bytes, got {len(raw)}")
        return Hash32("0x" + raw.hex())
    if isinstance(value, str) and _HEX64.fullmatch(value):
        return Hash32(value.lower())
    raise ConfigError(f"{what} must be 32 bytes or '0x' + 64 hex digits, got {value!r}")


def to_wei(value: int, *, what: str = "amount") -> Wei:
    """Validate a non-negative integer amount in wei.

    Args:
        value: The amount; ``bool`` and floats are refused to avoid silent rounding.
        what: Name used in the error message.

    Returns:
        The same amount typed as :data:`Wei`.

    Raises:
        ConfigError: If ``value`` is not a non-negative ``int``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an int number of wei, got {type(value).__name__}")
    if value < 0:
        raise ConfigError(f"{what} must be >= 0 wei, got {value}")
    return Wei(value)
