"""Small result types the datanet hands back."""

from __future__ import annotations

from dataclasses import dataclass

from openledger.data.schemas import Record
from openledger.types import Address, Hash32

__all__ = ["ContributionReceipt", "Reputation", "Review", "StoredRecord"]


@dataclass(frozen=True, slots=True)
class ContributionReceipt:
    """Proof of storage for one contributed record.

    Attributes:
        record_hash: keccak256 of the record's canonical encoding.
        contribution_id: The contribution (one signed batch) it arrived in.
        position: Its index in the signed batch (a leaf of the signed records root).
        contributor: Who signed it.
        near_duplicates: Hashes of stored records it closely resembles (flagged, not refused).
    """

    record_hash: Hash32
    contribution_id: int
    position: int
    contributor: Address
    near_duplicates: tuple[Hash32, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored, with its provenance.

    Attributes:
        record: The validated record.
        record_hash: Its hash.
        contributor: Who contributed it.
        contribution_id: The contribution it arrived in.
        position: Its index in that contribution.
        status: ``"accepted"`` or ``"rejected"`` (rejected records leave future snapshots).
    """

    record: Record
    record_hash: Hash32
    contributor: Address
    contribution_id: int
    position: int
    status: str


@dataclass(frozen=True, slots=True)
class Reputation:
    """A contributor's standing in one datanet.

    Attributes:
        contributor: The address.
        records: Records contributed.
        rejected: Of those, rejected by validators.
        score: ``(records - rejected + 1) / (records + 1)``: 1.0 with no history, lower with
            every rejection, recovering slowly with accepted work.
    """

    contributor: Address
    records: int
    rejected: int

    @property
    def score(self) -> float:
        """Share of accepted work with one free accepted record of prior."""
        return (self.records - self.rejected + 1) / (self.records + 1)


@dataclass(frozen=True, slots=True)
class Review:
    """A validator's signed decision on one record.

    Attributes:
        record_hash: The record reviewed.
        validator: Who signed.
        accept: Accepted (``True``) or rejected.
        reason: The validator's reason.
        signature: EIP-712 signature over ``Review(datanet, recordHash, accept, reason)``.
        created_at: Unix time.
    """

    record_hash: Hash32
    validator: Address
    accept: bool
    reason: str
    signature: str
    created_at: float
