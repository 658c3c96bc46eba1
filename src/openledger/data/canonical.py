"""The canonical byte encoding of a record, and its hash.

Encoding (see docs/data.md for the full specification)::

    canonical(record) = UTF-8( JSON( {"data": fields, "schema": schema_id} ) )

* every string, key or value, is put in Unicode NFC;
* fields whose value is ``None`` are left out (so adding an optional field to a schema
  keeps old hashes);
* JSON with keys sorted by code point, separators ``","`` and ``":"``, no whitespace,
  non-ASCII characters written as themselves (not ``\\u`` escapes);
* integers in decimal; floats must be finite and use the shortest round-trip form.

``record_hash = keccak256(canonical(record))``, written as ``0x`` + 64 hex digits.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

from openledger.crypto import keccak256
from openledger.data.schemas import Record
from openledger.exceptions import SchemaError
from openledger.types import Hash32

__all__ = [
    "canonical_bytes",
    "canonical_fields",
    "encode_canonical",
    "record_hash",
    "record_hash_bytes",
]

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)


def _nfc(text: str) -> str:
    # NOTE: is_normalized is a fast C check; most text is already NFC.
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


class _NotFinite(Exception):
    pass


def _normalise(value: Any) -> Any:
    # NOTE: hot path (every record, every field): no path bookkeeping here; on failure
    # _field_path finds the offending field by a second, slow walk.
    if isinstance(value, str):
        return _nfc(value)
    if isinstance(value, dict):
        return {_nfc(k): _normalise(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise _NotFinite
    return value


def _field_path(value: Any, path: str) -> str | None:
    """Return the path of the first non-finite number inside ``value``, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    for sub_path, item in items:
        found = _field_path(item, sub_path)
        if found:
            return found
    return None


def canonical_fields(record: Record) -> dict[str, Any]:
    """Return the record's fields as the canonical JSON value (NFC, ``None`` dropped)."""
    fields = record.model_dump(mode="json", exclude_none=True)
    try:
        return _normalise(fields)  # type: ignore[no-any-return]
    except _NotFinite:
        where = _field_path(fields, "record")
        raise SchemaError(
            f"field {where} is not finite; only finite numbers can be hashed"
        ) from None


def canonical_bytes(record: Record) -> bytes:
    """Return the canonical UTF-8 encoding of ``record`` (schema id included).

    Raises:
        SchemaError: If a string is not encodable as UTF-8 (e.g. a lone surrogate) or a
            number is not finite.
    """
    return encode_canonical(record.schema_id, canonical_fields(record))


def encode_canonical(schema_id: str, fields: dict[str, Any]) -> bytes:
    """Encode already-normalised ``fields`` (from :func:`canonical_fields`) under a schema id.

    Raises:
        SchemaError: If a string is not encodable as UTF-8.
    """
    text = _ENCODER.encode({"data": fields, "schema": _nfc(schema_id)})
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SchemaError(
            f"record is not valid UTF-8 text near {text[max(0, exc.start - 20) : exc.end]!r}; "
            "decode your input as UTF-8 before contributing"
        ) from None


def record_hash_bytes(record: Record) -> bytes:
    """Return the 32-byte record hash ``keccak256(canonical_bytes(record))``."""
    return keccak256(canonical_bytes(record))


def record_hash(record: Record) -> Hash32:
    """Return the record hash as ``0x`` + 64 lowercase hex digits."""
    return Hash32("0x" + record_hash_bytes(record).hex())
