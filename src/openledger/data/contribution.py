"""The steps of one contribution inside its write transaction.

The facade prepares the batch outside the transaction (validation and hashing need no
lock); these functions then check it against the store, verify the signature and insert,
all inside one ``BEGIN IMMEDIATE`` so a failure anywhere stores nothing.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from openledger.crypto import to_hex
from openledger.data import queries
from openledger.data.ingest import PreparedBatch
from openledger.data.neardup import NearDuplicateIndex
from openledger.data.receipts import ContributionReceipt
from openledger.data.signing import (
    SignedContribution,
    contribution_message,
    records_root,
    signer_of,
)
from openledger.data.store_api import Connection
from openledger.exceptions import DuplicateRecordError, NonceError, SignatureError
from openledger.types import Address, Hash32

__all__ = ["drop_stored", "insert_batch", "next_nonce", "verify_signed"]


def drop_stored(
    conn: Connection, batch: PreparedBatch, keep: list[int], *, skip: bool, name: str
) -> list[int]:
    """Return ``keep`` without positions whose record is already stored.

    Raises:
        DuplicateRecordError: If one is stored and ``skip`` is false.
    """
    stored = queries.existing_hashes(conn, [batch.hashes[i] for i in keep])
    if not stored:
        return keep
    if not skip:
        position = next(i for i in keep if batch.hashes[i] in stored)
        raise DuplicateRecordError(
            f"record {position} is already in datanet {name!r} (hash "
            f"{to_hex(batch.hashes[position])}); remove it or create with duplicates='skip'"
        )
    return [i for i in keep if batch.hashes[i] not in stored]


def next_nonce(conn: Connection, address: str) -> int:
    """Return the next unused nonce of ``address``."""
    row = conn.execute(
        "SELECT COALESCE(MAX(nonce) + 1, 0) FROM contributions WHERE contributor = ?",
        (address,),
    ).fetchone()
    return int(row[0])


def verify_signed(
    conn: Connection,
    batch: PreparedBatch,
    signed: SignedContribution,
    *,
    datanet_id: str,
    name: str,
) -> None:
    """Check datanet, nonce, deadline, records root and signer of a signed contribution.

    Raises:
        SignatureError: Foreign datanet, a passed deadline, other records, or a signature
            by someone else.
        NonceError: A used (replayed) or skipped nonce.
    """
    if signed.datanet_id != datanet_id:
        raise SignatureError(
            f"the contribution was signed for datanet {signed.datanet_id}, not this one "
            f"({datanet_id}); sign it again for {name!r}"
        )
    expected = next_nonce(conn, signed.contributor)
    if signed.nonce != expected:
        word = "was already used (replay)" if signed.nonce < expected else "skips ahead"
        raise NonceError(
            f"nonce {signed.nonce} of {signed.contributor} {word}; the next nonce is "
            f"{expected} (Datanet.next_nonce)"
        )
    if signed.deadline < time.time():
        raise SignatureError(
            f"the contribution's deadline (unix time {signed.deadline}) has passed; sign it again"
        )
    if signed.count != len(batch) or records_root(batch.hashes) != signed.records_root:
        raise SignatureError(
            "the records do not match the signed records_root/count; sign exactly these records"
        )
    data = contribution_message(
        datanet_id, signed.records_root, signed.count, signed.nonce, signed.deadline
    )
    if signer_of(data, signed.signature, what="contribution") != signed.contributor:
        raise SignatureError(
            f"the signature was not made by {signed.contributor} (foreign or altered)"
        )


def insert_batch(
    conn: Connection,
    batch: PreparedBatch,
    keep: list[int],
    signed: SignedContribution,
    signatures: npt.NDArray[np.uint32] | None,
    near: NearDuplicateIndex | None,
) -> list[ContributionReceipt]:
    """Insert the contribution and its kept records, flag near-duplicates, return receipts."""
    contribution_id = queries.insert_contribution(conn, signed, batch.hashes)
    kept_signatures = None if signatures is None else signatures[keep]
    first_id = queries.insert_records(
        conn, batch, keep, signed.contributor, contribution_id, kept_signatures
    )
    ids = list(range(first_id, first_id + len(keep)))
    flagged: dict[int, tuple[Hash32, ...]] = {}
    if near is not None and kept_signatures is not None and ids:
        # NOTE: catch up with records other processes stored since this handle last looked.
        queries.load_signatures(conn, near, below=ids[0])
        flagged = queries.flag_near_duplicates(conn, near, ids, kept_signatures)
    contributor = Address(signed.contributor)
    return [
        ContributionReceipt(
            Hash32(to_hex(batch.hashes[p])), contribution_id, p, contributor, flagged.get(rid, ())
        )
        for rid, p in zip(ids, keep, strict=True)
    ]
