"""Turning raw inputs into validated, canonically encoded, hashed records.

Everything here runs before the store is touched, so a bad record stops a contribution
while nothing has been written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from openledger.crypto import keccak256
from openledger.data.canonical import canonical_fields, encode_canonical
from openledger.data.quality import QualityRule, strings_of
from openledger.data.schemas import Record, validate_record
from openledger.exceptions import DuplicateRecordError, QualityError, SchemaError

__all__ = ["DEFAULT_MAX_RECORD_BYTES", "PreparedBatch", "first_positions", "prepare_batch"]

DEFAULT_MAX_RECORD_BYTES = 1 << 20
"""Default size limit of one record's canonical encoding (1 MiB)."""


@dataclass(slots=True)
class PreparedBatch:
    """Validated records of one contribution with their encodings and hashes.

    Attributes:
        records: The validated records, in contribution order.
        payloads: Canonical encodings, one per record.
        hashes: 32-byte record hashes, one per record.
        texts: Searchable text per record (for MinHash), one per record.
    """

    records: list[Record]
    payloads: list[bytes]
    hashes: list[bytes]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.records)

    def keep(self, positions: Sequence[int]) -> PreparedBatch:
        """Return the batch reduced to ``positions`` (in that order)."""
        return PreparedBatch(
            [self.records[i] for i in positions],
            [self.payloads[i] for i in positions],
            [self.hashes[i] for i in positions],
            [self.texts[i] for i in positions],
        )


def _check_rules(rules: Sequence[QualityRule], record: Record, text: str, index: int) -> None:
    for rule in rules:
        reason = rule.check(record, text)
        if reason is not None:
            raise QualityError(f"record {index} fails quality rule {rule.name!r}: {reason}")


def prepare_batch(
    schema: type[Record],
    inputs: Iterable[Any],
    *,
    max_record_bytes: int,
    rules: Sequence[QualityRule] = (),
    with_text: bool = True,
) -> PreparedBatch:
    """Validate, encode, size-check, rule-check and hash every input.

    Args:
        schema: The datanet's record class.
        inputs: Dicts of fields or record instances.
        max_record_bytes: Largest allowed canonical encoding.
        rules: Quality rules every record must pass.
        with_text: Keep each record's searchable text (for near-duplicate checks); rules
            get it either way.

    Returns:
        The prepared batch.

    Raises:
        SchemaError: A record does not fit the schema, is too large or not UTF-8.
        QualityError: A record breaks a rule.
    """
    batch = PreparedBatch([], [], [], [])
    for index, value in enumerate(inputs):
        record = validate_record(schema, value, index=index)
        try:
            fields = canonical_fields(record)
            payload = encode_canonical(schema.schema_id, fields)
        except SchemaError as exc:
            raise SchemaError(f"record {index}: {exc}") from None
        if len(payload) > max_record_bytes:
            raise SchemaError(
                f"record {index} is {len(payload)} bytes encoded, over this datanet's "
                f"max_record_bytes={max_record_bytes}; split it or raise the limit"
            )
        text = "\n".join(strings_of(fields)) if rules or with_text else ""
        _check_rules(rules, record, text, index)
        batch.records.append(record)
        batch.payloads.append(payload)
        batch.hashes.append(keccak256(payload))
        batch.texts.append(text)
    if not batch.records:
        raise SchemaError("records is empty; a contribution needs at least one record")
    return batch


def first_positions(hashes: Sequence[bytes], *, skip: bool) -> list[int]:
    """Return positions of the first occurrence of each hash within one batch.

    Raises:
        DuplicateRecordError: If ``skip`` is false and a hash repeats.
    """
    seen: dict[bytes, int] = {}
    keep = []
    for position, digest in enumerate(hashes):
        if digest in seen:
            if not skip:
                raise DuplicateRecordError(
                    f"record {position} duplicates record {seen[digest]} of the same "
                    f"contribution (hash 0x{digest.hex()}); remove it or use duplicates='skip'"
                )
            continue
        seen[digest] = position
        keep.append(position)
    return keep
