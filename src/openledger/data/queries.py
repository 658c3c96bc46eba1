"""SQL for records, contributions, near-duplicate flags and snapshots.

Functions take an open connection (inside the caller's transaction where they write) so
the facade decides transaction boundaries.
"""

from __future__ import annotations

import json
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from openledger.crypto import from_hex, to_hex
from openledger.data.ingest import PreparedBatch
from openledger.data.neardup import NearDuplicateIndex
from openledger.data.receipts import StoredRecord
from openledger.data.schemas import Record
from openledger.data.signing import SignedContribution
from openledger.data.snapshot import Snapshot, make_manifest, manifest_hash, snapshot_root
from openledger.data.store_api import Connection, insert_rows
from openledger.exceptions import DataNotFoundError
from openledger.types import Address, Hash32

__all__ = [
    "Opener",
    "as_stored",
    "dump_json",
    "existing_hashes",
    "flag_near_duplicates",
    "get_record",
    "insert_contribution",
    "insert_records",
    "insert_snapshot",
    "iter_records",
    "iter_records_by_ids",
    "load_signatures",
    "load_snapshot",
    "page_records",
]

_CHUNK = 900  # under SQLite's default limit of bound parameters per statement
_PAGE = 2_000  # records fetched per query while iterating
_RECORD_COLUMNS = "payload, hash, contributor, contribution_id, position, status"
_INSERT_COLUMNS = ("id", "hash", "contributor", "contribution_id", "position", "payload", "minhash")


def dump_json(value: Any) -> str:
    """Return canonical JSON (sorted keys, no spaces, UTF-8 characters kept)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def existing_hashes(conn: Connection, hashes: Sequence[bytes]) -> set[bytes]:
    """Return which of ``hashes`` are already stored."""
    found: set[bytes] = set()
    for start in range(0, len(hashes), _CHUNK):
        chunk = hashes[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT hash FROM records WHERE hash IN ({marks})", chunk)
        found.update(r[0] for r in rows)
    return found


def insert_contribution(
    conn: Connection, signed: SignedContribution, record_hashes: Sequence[bytes]
) -> int:
    """Store the signed contribution row (with every signed record hash); return its id."""
    rows = conn.execute(
        "INSERT INTO contributions (contributor, nonce, records_root, count, signature,"
        " created_at, record_hashes, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            signed.contributor,
            signed.nonce,
            from_hex(signed.records_root),
            signed.count,
            from_hex(signed.signature),
            time.time(),
            b"".join(record_hashes),
            signed.deadline,
        ),
    ).fetchall()
    return int(rows[0][0])


def insert_records(
    conn: Connection,
    batch: PreparedBatch,
    positions: Sequence[int],
    contributor: str,
    contribution_id: int,
    signatures: npt.NDArray[np.uint32] | None,
) -> int:
    """Insert the records at ``positions`` of ``batch``; return the first new record id.

    Ids are consecutive because the caller holds the write lock for the whole transaction.
    """
    first = int(conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM records").fetchone()[0])
    sigs: list[bytes | None] = (
        [None] * len(positions) if signatures is None else [s.tobytes() for s in signatures]
    )
    rows = (
        (first + n, batch.hashes[p], contributor, contribution_id, p, batch.payloads[p], sigs[n])
        for n, p in enumerate(positions)
    )
    insert_rows(conn, "records", _INSERT_COLUMNS, rows)
    return first


def load_signatures(conn: Connection, index: NearDuplicateIndex, *, below: int) -> None:
    """Add stored signatures with ids in ``(index.last_id, below)`` to ``index``."""
    rows = conn.execute(
        "SELECT id, minhash FROM records WHERE id > ? AND id < ? AND minhash IS NOT NULL"
        " ORDER BY id",
        (index.last_id, below),
    ).fetchall()
    if rows:
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint32)
        index.add([int(r[0]) for r in rows], matrix.reshape(len(rows), -1))


def flag_near_duplicates(
    conn: Connection,
    index: NearDuplicateIndex,
    ids: Sequence[int],
    signatures: npt.NDArray[np.uint32],
) -> dict[int, tuple[Hash32, ...]]:
    """Index new records, then flag each one that resembles an older record.

    ``index`` must already hold every record stored before ``ids[0]``; "older" then means
    any record with a smaller id, in the store or earlier in this batch.

    Returns:
        For each flagged new record id, the hashes of the records it resembles.
    """
    index.add(ids, signatures)
    found: dict[int, list[int]] = {}
    for rid, matches in zip(ids, index.query(signatures, below=ids), strict=True):
        if matches:
            found[rid] = [other for other, _ in matches]
    hashes = _hashes_of(conn, sorted({o for others in found.values() for o in others}))
    conn.executemany(
        "INSERT INTO flags (record_id, kind, detail) VALUES (?, 'near-duplicate', ?)",
        [(rid, hashes[o]) for rid, others in found.items() for o in others],
    )
    return {rid: tuple(Hash32(hashes[o]) for o in others) for rid, others in found.items()}


def _hashes_of(conn: Connection, ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        for rid, digest in conn.execute(
            f"SELECT id, hash FROM records WHERE id IN ({marks})", chunk
        ):
            out[int(rid)] = to_hex(digest)
    return out


Opener = Callable[[bytes, bytes], bytes]
"""Turns a stored payload and its record hash into the canonical payload (decryption)."""


def as_stored(payload: bytes, record_hash: bytes) -> bytes:
    """The :data:`Opener` of a datanet that does not encrypt: the payload as stored."""
    return bytes(payload)


def _stored(schema: type[Record], row: Sequence[Any], opener: Opener) -> StoredRecord:
    payload, digest, contributor, contribution_id, position, status = row
    record = schema.model_validate(json.loads(opener(payload, bytes(digest)))["data"])
    return StoredRecord(
        record,
        Hash32(to_hex(digest)),
        Address(contributor),
        int(contribution_id),
        int(position),
        status,
    )


def iter_records(
    conn: Connection,
    schema: type[Record],
    *,
    include_rejected: bool,
    opener: Opener = as_stored,
) -> Iterator[StoredRecord]:
    """Yield the records stored when iteration starts, in arrival order, page by page.

    NOTE: no cursor stays open between pages, so the caller may contribute while
    iterating without seeing (or looping over) its own new records.
    """
    top = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()[0])
    status = "" if include_rejected else " AND status = 'accepted'"
    query = (
        f"SELECT id, {_RECORD_COLUMNS} FROM records"
        f" WHERE id > ? AND id <= ?{status} ORDER BY id LIMIT {_PAGE}"
    )
    last = 0
    while rows := conn.execute(query, (last, top)).fetchall():
        for row in rows:
            yield _stored(schema, row[1:], opener)
        last = int(rows[-1][0])


def page_records(
    conn: Connection,
    schema: type[Record],
    *,
    after: int,
    limit: int,
    include_rejected: bool,
    opener: Opener = as_stored,
) -> tuple[list[StoredRecord], int]:
    """Return up to ``limit`` records stored after record id ``after``, in arrival order,
    and the id to pass as ``after`` for the next page (``after`` itself when none came)."""
    status = "" if include_rejected else " AND status = 'accepted'"
    rows = conn.execute(
        f"SELECT id, {_RECORD_COLUMNS} FROM records WHERE id > ?{status} ORDER BY id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [_stored(schema, row[1:], opener) for row in rows], int(rows[-1][0]) if rows else after


def get_record(
    conn: Connection,
    schema: type[Record],
    record_hash: str | bytes,
    opener: Opener = as_stored,
) -> StoredRecord:
    """Return one stored record by hash.

    Raises:
        DataNotFoundError: If it is not stored.
    """
    digest = from_hex(record_hash, size=32, what="record_hash")
    row = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM records WHERE hash = ?", (digest,)
    ).fetchone()
    if row is None:
        raise DataNotFoundError(f"no record with hash {to_hex(digest)} in this datanet")
    return _stored(schema, row, opener)


def iter_records_by_ids(
    conn: Connection,
    schema: type[Record],
    ids: array[int],
    opener: Opener = as_stored,
) -> Iterator[StoredRecord]:
    """Yield the records with the given ids, in the given order."""
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT id, {_RECORD_COLUMNS} FROM records WHERE id IN ({marks})", chunk
        )
        by_id = {int(r[0]): r[1:] for r in rows}
        for rid in chunk:
            yield _stored(schema, by_id[rid], opener)


def insert_snapshot(
    conn: Connection, manifest_base: Callable[[int], dict[str, Any]], name: str
) -> int:
    """Freeze the accepted records into a new snapshot row; return its id.

    Raises:
        DataNotFoundError: If there are no accepted records.
    """
    # NOTE: the contributor comes from the signed contribution row, not records.contributor:
    # a leaf decides who is paid, and only the former is covered by a signature.
    rows = conn.execute(
        "SELECT records.id, records.hash, contributions.contributor FROM records"
        " JOIN contributions ON contributions.id = records.contribution_id"
        " WHERE records.status = 'accepted' ORDER BY records.id"
    ).fetchall()
    if not rows:
        raise DataNotFoundError(f"datanet {name!r} has no accepted records to snapshot")
    addresses = {c: from_hex(c, size=20) for c in {r[2] for r in rows}}
    leaves = b"".join([h + addresses[c] for _, h, c in rows])
    root = snapshot_root(leaves)
    snapshot_id = int(conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM snapshots").fetchone()[0])
    manifest = make_manifest(manifest_base(snapshot_id), leaves, root, time.time())
    conn.execute(
        "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            snapshot_id,
            from_hex(root),
            len(rows),
            manifest["created_at"],
            array("q", (r[0] for r in rows)).tobytes(),
            leaves,
            dump_json(manifest),
            from_hex(manifest_hash(manifest)),
        ),
    )
    return snapshot_id


def load_snapshot(conn: Connection, snapshot_id: int, datanet: Any) -> Snapshot:
    """Load a snapshot row.

    Raises:
        DataNotFoundError: If there is no such snapshot.
    """
    row = conn.execute(
        "SELECT id, root, count, created_at, record_ids, leaves, manifest, manifest_hash"
        " FROM snapshots WHERE id = ?",
        (snapshot_id,),
    ).fetchone()
    if row is None:
        raise DataNotFoundError(f"no snapshot with id {snapshot_id}; see Datanet.snapshots()")
    ids: array[int] = array("q")
    ids.frombytes(row[4])
    return Snapshot(
        id=int(row[0]),
        root=Hash32(to_hex(row[1])),
        count=int(row[2]),
        created_at=float(row[3]),
        manifest=json.loads(row[6]),
        manifest_hash=Hash32(to_hex(row[7])),
        _leaves=bytes(row[5]),
        _record_ids=ids,
        _datanet=datanet,
    )
