"""Commit before reveal: binding records to their author before anyone sees them.

Whoever carries a contribution to the store (a relay, a gateway, a shared notebook) sees its
records and could sign them first under its own address. A contributor who fears that
first stores one *commitment* per record,

    commitment = keccak256(abi.encode(bytes32 recordHash, address contributor))

which says nothing about the record (it is a hash of a hash) and cannot be turned into a
commitment for another address without knowing the record. Then it sends the records. A
record committed by one contributor is refused for every other contributor whose own
commitment to it (if any) came later, so seeing the records in transit is too late to take
them. Commitments expire (``ttl_seconds``) and are consumed when their records are stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from openledger.crypto import from_hex, keccak256, to_hex
from openledger.data.store_api import Connection
from openledger.exceptions import ConfigError, DuplicateRecordError
from openledger.types import Hash32

__all__ = ["check_commitments", "commitment_of", "store_commitments"]

_CHUNK = 900


def commitment_of(record_hash: str | bytes, contributor: str) -> Hash32:
    """Return the commitment of ``contributor`` to the record with ``record_hash``.

    Args:
        record_hash: The record hash (``Datanet.record_hash`` or ``data.record_hash``).
        contributor: The contributor's address.

    Returns:
        ``keccak256(abi.encode(recordHash, contributor))`` as ``0x``-hex.
    """
    digest = from_hex(record_hash, size=32, what="record_hash")
    return Hash32(to_hex(keccak256(digest + bytes(12) + from_hex(contributor, size=20))))


def store_commitments(
    conn: Connection, commitments: Sequence[str | bytes], contributor: str, ttl: int
) -> int:
    """Store new commitments (ignoring repeats) and drop expired ones; return how many."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise ConfigError(f"ttl_seconds must be a positive int, got {ttl!r}")
    digests = [from_hex(c, size=32, what="commitment") for c in commitments]
    now = int(time.time())
    conn.execute("DELETE FROM commitments WHERE expires_at <= ?", (now,))
    cursor = conn.executemany(
        "INSERT INTO commitments (commitment, contributor, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (commitment) DO NOTHING",
        [(d, contributor, now + ttl) for d in digests],
    )
    return cursor.rowcount


def _found(conn: Connection, digests: list[bytes], now: int) -> dict[bytes, int]:
    """Return the live commitments among ``digests`` with their (arrival-ordered) ids."""
    out: dict[bytes, int] = {}
    for start in range(0, len(digests), _CHUNK):
        chunk = digests[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        query = (
            "SELECT commitment, id FROM commitments"
            f" WHERE expires_at > ? AND commitment IN ({marks})"
        )
        out.update((bytes(c), int(i)) for c, i in conn.execute(query, [now, *chunk]))
    return out


def check_commitments(
    conn: Connection, hashes: Sequence[bytes], positions: Sequence[int], contributor: str
) -> None:
    """Refuse records another contributor committed to first; consume the contributor's own.

    Runs inside the contribution's write transaction.

    Raises:
        DuplicateRecordError: Naming the first record committed earlier by someone else.
    """
    now = int(time.time())
    others = [
        str(r[0])
        for r in conn.execute(
            "SELECT DISTINCT contributor FROM commitments"
            " WHERE expires_at > ? AND contributor != ?",
            (now, contributor),
        )
    ]
    own = {p: from_hex(commitment_of(hashes[p], contributor)) for p in positions}
    theirs = {(p, o): from_hex(commitment_of(hashes[p], o)) for p in positions for o in others}
    found = _found(conn, [*own.values(), *theirs.values()], now)
    for (position, _), digest in theirs.items():
        mine = found.get(own[position])
        if digest in found and (mine is None or found[digest] < mine):
            raise DuplicateRecordError(
                f"record {position} was committed to by another contributor before you; "
                "it is theirs to reveal"
            )
    # NOTE: only the live commitments found above exist to consume (expired ones are
    # dropped by the next store_commitments); most contributions have none at all.
    consumed = [(own[p],) for p in positions if own[p] in found]
    if consumed:
        conn.executemany("DELETE FROM commitments WHERE commitment = ?", consumed)
