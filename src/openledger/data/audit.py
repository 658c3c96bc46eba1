"""Re-checking a datanet from its file alone: record hashes, contribution roots, signatures.

Anyone holding a copy of ``datanet.sqlite`` can run :func:`audit` to confirm that every
stored record still hashes to its recorded hash, that each contribution's signed records
root matches the hashes it lists, that stored records sit at their signed positions, and
that every contribution and review signature recovers to its recorded signer.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from openledger.crypto import keccak256, to_hex
from openledger.data.governance import reviews
from openledger.data.schemas import Record
from openledger.data.signing import (
    contribution_message,
    records_root,
    review_message,
    signer_of,
)
from openledger.exceptions import SignatureError
from openledger.types import Hash32

__all__ = ["AuditReport", "audit"]


@dataclass
class AuditReport:
    """What an audit checked and what it found.

    Attributes:
        records: Records whose payload was re-hashed and re-validated.
        contributions: Contributions whose signature (and root, when stored) was checked.
        reviews: Reviews whose signature was checked.
        problems: One line per inconsistency; empty when the datanet is intact.
    """

    records: int = 0
    contributions: int = 0
    reviews: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.problems


def _check_records(
    conn: sqlite3.Connection, schema: type[Record], report: AuditReport
) -> dict[int, dict[int, bytes]]:
    stored: dict[int, dict[int, bytes]] = {}
    rows = conn.execute("SELECT id, hash, payload, contribution_id, position FROM records")
    for rid, digest, payload, contribution_id, position in rows:
        report.records += 1
        stored.setdefault(int(contribution_id), {})[int(position)] = bytes(digest)
        if keccak256(bytes(payload)) != digest:
            report.problems.append(f"record {rid}: payload does not hash to {to_hex(digest)}")
            continue
        try:
            schema.model_validate(json.loads(payload)["data"])
        except (ValueError, KeyError) as exc:
            report.problems.append(f"record {rid}: payload no longer fits the schema: {exc}")
    return stored


def _check_contribution(
    row: tuple[Any, ...], datanet_id: str, positions: dict[int, bytes], report: AuditReport
) -> None:
    cid, contributor, nonce, root, count, signature, hashes = row
    report.contributions += 1
    root_hex = to_hex(bytes(root))
    if hashes is not None:
        signed = [bytes(hashes[i : i + 32]) for i in range(0, len(hashes), 32)]
        if len(signed) != count or records_root(signed) != root_hex:
            report.problems.append(f"contribution {cid}: stored hashes do not give its root")
        for position, digest in positions.items():
            if position >= len(signed) or signed[position] != digest:
                report.problems.append(f"contribution {cid}: record at {position} was not signed")
    data = contribution_message(datanet_id, root_hex, int(count), int(nonce))
    try:
        valid = signer_of(data, bytes(signature), what="contribution") == contributor
    except SignatureError:
        valid = False
    if not valid:
        report.problems.append(f"contribution {cid}: signature is not {contributor}'s")


def audit(conn: sqlite3.Connection, datanet_id: Hash32, schema: type[Record]) -> AuditReport:
    """Check every record and contribution of a datanet's store (see module docstring)."""
    report = AuditReport()
    stored = _check_records(conn, schema, report)
    rows = conn.execute(
        "SELECT id, contributor, nonce, records_root, count, signature, record_hashes"
        " FROM contributions ORDER BY id"
    )
    for row in rows:
        _check_contribution(tuple(row), datanet_id, stored.get(int(row[0]), {}), report)
    for number, review in enumerate(reviews(conn), start=1):
        report.reviews += 1
        data = review_message(datanet_id, review.record_hash, review.accept, review.reason)
        try:
            valid = signer_of(data, review.signature, what="review") == review.validator
        except SignatureError:
            valid = False
        if not valid:
            report.problems.append(f"review {number}: signature is not {review.validator}'s")
    return report
