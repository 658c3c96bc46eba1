"""Validation of the settings a datanet is created with."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence

from openledger.crypto import Account, keccak256, to_hex
from openledger.data.quality import QualityRule
from openledger.data.schemas import Record, schema_hash, schema_ref
from openledger.data.sealing import CIPHER, key_check
from openledger.data.signing import as_account_address
from openledger.exceptions import ConfigError

__all__ = ["BOUND_SETTINGS", "bind_id", "check_rules", "unbound_settings", "validated_settings"]

BOUND_SETTINGS = (
    "name",
    "schema_id",
    "schema_ref",
    "schema_hash",
    "visibility",
    "owner",
    "grants",
    "encryption",
)
"""The ``meta`` settings a datanet's id is derived from: changing one changes the id, and
every contribution, review and grant signature names the id."""

_ID_PREFIX = b"openledger.datanet/2"


def validated_settings(
    name: str,
    schema: type[Record],
    visibility: str,
    owner: Account | str | None,
    max_record_bytes: int,
    duplicates: str,
    threshold: float,
    grants: str = "bearer",
    encryption_key: bytes | str | None = None,
) -> dict[str, str]:
    """Check every ``Datanet.create`` argument and return the ``meta`` rows to store.

    Raises:
        ConfigError: Naming the first bad argument and what it must be.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("name must be a non-empty string")
    if not (isinstance(schema, type) and issubclass(schema, Record)):
        raise ConfigError(
            f"schema must be a Record subclass such as InstructionRecord, got {schema!r}"
        )
    if visibility not in ("public", "private"):
        raise ConfigError(f"visibility must be 'public' or 'private', got {visibility!r}")
    if visibility == "private" and owner is None:
        raise ConfigError("a private datanet needs owner=Account (who approves access)")
    if grants not in ("bearer", "bound"):
        raise ConfigError(f"grants must be 'bearer' or 'bound', got {grants!r}")
    if duplicates not in ("error", "skip"):
        raise ConfigError(f"duplicates must be 'error' or 'skip', got {duplicates!r}")
    if (
        isinstance(max_record_bytes, bool)
        or not isinstance(max_record_bytes, int)
        or max_record_bytes < 64
    ):
        raise ConfigError(f"max_record_bytes must be an int >= 64, got {max_record_bytes!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"near_duplicate_threshold must be in [0, 1], got {threshold!r}")
    owner_address = "" if owner is None else as_account_address(owner, what="owner")
    return {
        "name": name,
        "schema_id": schema.schema_id,
        "schema_ref": schema_ref(schema),
        "schema_hash": schema_hash(schema),
        "visibility": visibility,
        "owner": owner_address,
        "grants": grants,
        "encryption": "" if encryption_key is None else CIPHER,
        "key_check": "" if encryption_key is None else key_check(encryption_key),
        "max_record_bytes": str(max_record_bytes),
        "duplicates": duplicates,
        "near_duplicate_threshold": repr(float(threshold)),
        "created_at": repr(time.time()),
    }


def check_rules(rules: Sequence[object]) -> None:
    """Raise unless every rule has a ``name`` and a ``check(record, text)`` method.

    Raises:
        ConfigError: Naming the type of the first unfit rule.
    """
    bad = [r for r in rules if not isinstance(r, QualityRule)]
    if bad:
        raise ConfigError(
            f"rules must have a name and check(record, text), got {type(bad[0]).__name__}"
        )


def _derived_id(meta: Mapping[str, str], salt: str) -> str:
    bound = {key: meta.get(key, "") for key in BOUND_SETTINGS}
    text = json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return to_hex(keccak256(_ID_PREFIX + text.encode("utf-8") + bytes.fromhex(salt)))


def bind_id(settings: dict[str, str]) -> None:
    """Add a random ``id_salt`` and the ``id`` derived from it and the bound settings."""
    settings["id_salt"] = os.urandom(32).hex()
    settings["id"] = _derived_id(settings, settings["id_salt"])


def unbound_settings(meta: Mapping[str, str]) -> str | None:
    """Say why ``meta`` no longer derives its id, or return ``None`` when it does.

    Datanets created before ids were derived have no ``id_salt``; for them the answer is
    ``None`` too; an audit reports them as unbound.
    """
    salt = meta.get("id_salt")
    if salt is None:
        return None
    try:
        derived = _derived_id(meta, salt)
    except ValueError:
        return "its id_salt is not hex"
    if derived != meta.get("id"):
        return (
            "its settings (" + ", ".join(BOUND_SETTINGS) + ") no longer give its id: "
            "one of them was changed in the file"
        )
    return None
