"""Audit of snapshots: leaves re-derived from records and signatures, roots from leaves,
manifests from both, and the roots published on chain against the store's.

A snapshot leaf ``(recordHash, contributor)`` decides who is paid for a record, so each one
must be the record's hash and the signer of the record's contribution, not whatever the
``records.contributor`` column says.
"""

from __future__ import annotations

import json
from array import array
from typing import TYPE_CHECKING, Any

from openledger.crypto import to_checksum_address, to_hex
from openledger.data.snapshot import make_manifest, manifest_hash, snapshot_root
from openledger.data.store_api import Connection
from openledger.types import Address

if TYPE_CHECKING:
    from openledger.data.audit import AuditReport

__all__ = ["check_chain", "check_snapshots"]

_LEAF_SIZE = 52


def _check_leaves(
    sid: int,
    leaves: bytes,
    ids: array[int],
    records: dict[int, tuple[bytes, Address | None]],
    report: AuditReport,
) -> None:
    for number, rid in enumerate(ids):
        offset = number * _LEAF_SIZE
        digest, address = leaves[offset : offset + 32], leaves[offset + 32 : offset + 52]
        found = records.get(rid)
        if found is None:
            report.problems.append(f"snapshot {sid}: leaf {number} names record {rid}, not stored")
            continue
        if digest != found[0]:
            report.problems.append(
                f"snapshot {sid}: leaf {number} has hash {to_hex(digest)}, record {rid} "
                f"has {to_hex(found[0])}"
            )
        signer = found[1]
        if signer is not None and to_checksum_address(address) != signer:
            report.problems.append(
                f"snapshot {sid}: leaf {number} pays {to_checksum_address(address)} for record "
                f"{to_hex(found[0])}, whose contribution {signer} signed"
            )


def _check_manifest(
    sid: int, row: tuple[Any, ...], datanet_id: str, root: str, report: AuditReport
) -> None:
    _, _, count, _, _, leaves, text, stored_hash = row
    manifest = json.loads(text)
    if to_hex(bytes(stored_hash)) != manifest_hash(manifest):
        report.problems.append(f"snapshot {sid}: manifest does not hash to its manifest_hash")
    expected = make_manifest(manifest, bytes(leaves), root, manifest.get("created_at", 0))
    for key in ("root", "count", "contributors"):
        if manifest.get(key) != expected[key]:
            report.problems.append(f"snapshot {sid}: manifest {key} does not follow its leaves")
    if manifest.get("datanet_id") != datanet_id or manifest.get("snapshot_id") != sid:
        report.problems.append(f"snapshot {sid}: manifest names another datanet or snapshot")
    if count != len(leaves) // _LEAF_SIZE:
        report.problems.append(f"snapshot {sid}: count {count} is not its number of leaves")


def check_snapshots(
    conn: Connection,
    datanet_id: str,
    records: dict[int, tuple[bytes, Address | None]],
    report: AuditReport,
) -> dict[str, int]:
    """Re-derive every snapshot; return each stored root with its count.

    Args:
        conn: The store's connection.
        datanet_id: The datanet id.
        records: Record id -> (hash, signer of its contribution or ``None`` when forged).
        report: Where problems go.
    """
    roots: dict[str, int] = {}
    query = (
        "SELECT id, root, count, created_at, record_ids, leaves, manifest, manifest_hash"
        " FROM snapshots ORDER BY id"
    )
    for row in conn.execute(query):
        report.snapshots += 1
        sid, leaves = int(row[0]), bytes(row[5])
        ids: array[int] = array("q")
        ids.frombytes(bytes(row[4]))
        if len(leaves) % _LEAF_SIZE or len(ids) != len(leaves) // _LEAF_SIZE or not ids:
            report.problems.append(f"snapshot {sid}: its leaves and record ids do not match")
            continue
        root = snapshot_root(leaves)
        if to_hex(bytes(row[1])) != root:
            report.problems.append(f"snapshot {sid}: stored root is not the root of its leaves")
        roots[to_hex(bytes(row[1]))] = int(row[2])
        _check_leaves(sid, leaves, ids, records, report)
        _check_manifest(sid, tuple(row), datanet_id, root, report)
    return roots


def check_chain(
    protocol: Any, chain_datanet_id: str, roots: dict[str, int], report: AuditReport
) -> None:
    """Check that every snapshot published on chain is a snapshot of this store.

    Args:
        protocol: An ``openledger.chain.Protocol`` (its ``datanets`` registry is read).
        chain_datanet_id: The datanet's id in that registry.
        roots: Root -> count of the store's snapshots.
        report: Where problems go.
    """
    registry = protocol.datanets
    for index in range(int(registry.snapshot_count(chain_datanet_id))):
        published = registry.get_snapshot(chain_datanet_id, index)
        root, count = str(published.root), int(published.record_count)
        if roots.get(root) != count:
            report.problems.append(
                f"chain snapshot {index}: root {root} ({count} records) is not a snapshot "
                "of this datanet's store"
            )
