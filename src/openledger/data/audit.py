"""Re-checking a datanet from its file alone, re-deriving everything that decides money.

Anyone holding a copy of ``datanet.sqlite`` can run :func:`audit`. Nothing stored is
trusted when it can be derived from a signature instead:

* the settings (owner, visibility, name, schema) must still derive the datanet id;
* every payload must hash to its record hash and fit the schema;
* every contribution's signature gives its contributor; its stored record hashes must give
  the signed records root, every record must sit at a signed position, and the record's
  ``contributor`` column must be that signer (snapshot leaves and rewards are built from
  it); each contributor's nonces must run 0, 1, 2 ... (a gap is a deleted contribution);
* validators must carry the owner's signature, reviews their validator's, and a record's
  status must be what its latest valid signed review decided;
* every snapshot's leaves must be its records with their signed contributors, and its
  root, count and manifest must follow from them (see :mod:`.audit_snapshots`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openledger.crypto import keccak256, to_hex
from openledger.data.audit_snapshots import check_chain, check_snapshots
from openledger.data.governance import reviews, signed_validators
from openledger.data.queries import Opener, as_stored
from openledger.data.schemas import Record
from openledger.data.settings import unbound_settings
from openledger.data.signing import (
    contribution_message,
    records_root,
    review_message,
    signer_of,
)
from openledger.data.store_api import Connection
from openledger.exceptions import SignatureError, StoreError
from openledger.types import Address, Hash32

__all__ = ["AuditReport", "audit"]


@dataclass
class AuditReport:
    """What an audit checked and what it found.

    Attributes:
        records: Records whose payload was re-hashed and re-validated.
        contributions: Contributions whose signature (and root, when stored) was checked.
        reviews: Reviews whose signature was checked.
        snapshots: Snapshots whose leaves, root and manifest were re-derived.
        problems: One line per inconsistency; empty when the datanet is intact.
        warnings: What could not be checked (rows from older store versions).
    """

    records: int = 0
    contributions: int = 0
    reviews: int = 0
    snapshots: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.problems


@dataclass(slots=True)
class _Row:
    digest: bytes
    contributor: str
    contribution_id: int
    position: int
    status: str


def _check_settings(meta: Mapping[str, str], report: AuditReport) -> None:
    altered = unbound_settings(meta)
    if altered is not None:
        report.problems.append(f"settings: {altered}")
    elif "id_salt" not in meta:
        report.warnings.append(
            "settings: this datanet's id is not derived from its owner and visibility "
            "(created before store version 3); they cannot be checked"
        )


def _check_records(
    conn: Connection, schema: type[Record], opener: Opener | None, report: AuditReport
) -> dict[int, _Row]:
    rows: dict[int, _Row] = {}
    query = "SELECT id, hash, payload, contribution_id, position, contributor, status FROM records"
    for rid, digest, payload, contribution_id, position, contributor, status in conn.execute(query):
        report.records += 1
        rows[int(rid)] = _Row(bytes(digest), contributor, int(contribution_id), position, status)
        if opener is not None:
            _check_payload(rid, bytes(digest), bytes(payload), schema, opener, report)
    if opener is None and rows:
        report.warnings.append(
            "records: payloads are encrypted at rest; open with encryption_key to re-hash them"
        )
    return rows


def _check_payload(
    rid: int,
    digest: bytes,
    stored: bytes,
    schema: type[Record],
    opener: Opener,
    report: AuditReport,
) -> None:
    try:
        payload = opener(stored, digest)
    except StoreError as exc:
        report.problems.append(f"record {rid}: {exc}")
        return
    if keccak256(payload) != digest:
        report.problems.append(f"record {rid}: payload does not hash to {to_hex(digest)}")
        return
    try:
        schema.model_validate(json.loads(payload)["data"])
    except (ValueError, KeyError) as exc:
        report.problems.append(f"record {rid}: payload no longer fits the schema: {exc}")


def _signer(row: tuple[Any, ...], datanet_id: str) -> Address | None:
    _, _, nonce, root, count, signature, _, deadline = row
    data = contribution_message(datanet_id, to_hex(bytes(root)), int(count), int(nonce), deadline)
    try:
        return signer_of(data, bytes(signature), what="contribution")
    except SignatureError:
        return None


def _check_signed_hashes(
    row: tuple[Any, ...], positions: dict[int, bytes], report: AuditReport
) -> None:
    cid, _, _, root, count, _, hashes, _ = row
    if hashes is None:
        report.warnings.append(
            f"contribution {cid}: stored before store version 2 without its record hashes; "
            "only its signature was checked"
        )
        return
    signed = [bytes(hashes[i : i + 32]) for i in range(0, len(hashes), 32)]
    if len(signed) != count or records_root(signed) != to_hex(bytes(root)):
        report.problems.append(f"contribution {cid}: stored hashes do not give its root")
    for position, digest in sorted(positions.items()):
        if position >= len(signed) or signed[position] != digest:
            report.problems.append(f"contribution {cid}: record at {position} was not signed")


def _check_contributions(
    conn: Connection, datanet_id: str, rows: dict[int, _Row], report: AuditReport
) -> dict[int, Address]:
    positions: dict[int, dict[int, bytes]] = {}
    for row in rows.values():
        positions.setdefault(row.contribution_id, {})[row.position] = row.digest
    signers: dict[int, Address] = {}
    nonces: dict[str, list[int]] = {}
    query = (
        "SELECT id, contributor, nonce, records_root, count, signature, record_hashes, deadline"
        " FROM contributions ORDER BY id"
    )
    for row in conn.execute(query):
        report.contributions += 1
        cid, contributor = int(row[0]), row[1]
        _check_signed_hashes(tuple(row), positions.get(cid, {}), report)
        # NOTE: a signature that does not recover to the stored contributor recovers to a
        # meaningless address; its records are then owned by nobody we can name.
        if _signer(tuple(row), datanet_id) != contributor:
            report.problems.append(f"contribution {cid}: signature is not {contributor}'s")
            continue
        signers[cid] = Address(contributor)
        nonces.setdefault(contributor, []).append(int(row[2]))
    for signer, used in sorted(nonces.items()):
        missing = sorted(set(range(max(used) + 1)) - set(used))
        if missing:
            report.problems.append(
                f"contributor {signer}: signed nonces {missing} are missing "
                "(a contribution was deleted)"
            )
    return signers


def _check_contributors(
    rows: dict[int, _Row], signers: dict[int, Address], report: AuditReport
) -> None:
    for rid, row in sorted(rows.items()):
        signer = signers.get(row.contribution_id)
        if signer is not None and row.contributor != signer:
            report.problems.append(
                f"record {rid}: contributor {row.contributor} is not {signer}, who signed "
                f"contribution {row.contribution_id}"
            )


def _latest_decisions(
    conn: Connection, datanet_id: str, owner: str | None, report: AuditReport
) -> dict[bytes, bool]:
    allowed, unsigned = signed_validators(conn, datanet_id, owner)
    for address in unsigned:
        report.problems.append(
            f"validator {address}: not signed by the owner; its reviews do not count"
        )
    reviewers = {*allowed, *([owner] if owner else [])}
    decisions: dict[bytes, bool] = {}
    for number, review in enumerate(reviews(conn), start=1):
        report.reviews += 1
        data = review_message(datanet_id, review.record_hash, review.accept, review.reason)
        try:
            valid = signer_of(data, review.signature, what="review") == review.validator
        except SignatureError:
            valid = False
        if not valid:
            report.problems.append(f"review {number}: signature is not {review.validator}'s")
        elif review.validator in reviewers:
            decisions[bytes.fromhex(review.record_hash[2:])] = review.accept
    return decisions


def _check_statuses(
    rows: dict[int, _Row], decisions: dict[bytes, bool], report: AuditReport
) -> None:
    for rid, row in sorted(rows.items()):
        expected = "rejected" if decisions.get(row.digest) is False else "accepted"
        if row.status != expected:
            report.problems.append(
                f"record {rid}: status {row.status!r} is not {expected!r}, what its latest "
                "signed review decided"
            )


def audit(
    conn: Connection,
    datanet_id: Hash32,
    schema: type[Record],
    meta: Mapping[str, str],
    *,
    protocol: Any = None,
    chain_datanet_id: str | None = None,
    opener: Opener | None = as_stored,
) -> AuditReport:
    """Check a datanet's store (see the module docstring), and its chain roots if given.

    Args:
        conn: The store's connection, inside one read transaction.
        datanet_id: The datanet id.
        schema: The record class.
        meta: The stored settings.
        protocol: An ``openledger.chain.Protocol``; with ``chain_datanet_id``, every
            snapshot published on chain must be one of the store's snapshots.
        chain_datanet_id: The datanet's id in the on-chain registry.
        opener: Turns stored payloads into canonical ones (decrypts); ``None`` when they
            are encrypted and the key is not at hand (they are then not re-hashed).

    Returns:
        The report.
    """
    report = AuditReport()
    _check_settings(meta, report)
    rows = _check_records(conn, schema, opener, report)
    signers = _check_contributions(conn, datanet_id, rows, report)
    _check_contributors(rows, signers, report)
    owner = meta.get("owner") or None
    _check_statuses(rows, _latest_decisions(conn, datanet_id, owner, report), report)
    contributors = {
        rid: (row.digest, signers.get(row.contribution_id)) for rid, row in rows.items()
    }
    roots = check_snapshots(conn, datanet_id, contributors, report)
    if protocol is not None and chain_datanet_id is not None:
        check_chain(protocol, chain_datanet_id, roots, report)
    return report
