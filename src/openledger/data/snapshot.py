"""Immutable snapshots of a datanet and their Merkle proofs.

A snapshot's ``root`` is an OpenZeppelin ``StandardMerkleTree`` root over the leaves
``(bytes32 recordHash, address contributor)`` of every accepted record at snapshot time,
so ``MerkleProof.verify(proof, root, keccak256(bytes.concat(keccak256(abi.encode(recordHash,
contributor)))))`` holds on chain for each of them.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openledger.crypto import (
    MultiProof,
    StandardMerkleTree,
    from_hex,
    keccak256,
    keccak256_hex,
    leaf_hash,
    root_of_leaves,
    to_checksum_address,
    to_hex,
)
from openledger.crypto import verify_proof as verify_leaf_proof
from openledger.exceptions import CryptoError, DataNotFoundError
from openledger.types import Address, Hash32

if TYPE_CHECKING:
    from openledger.data.access import AccessGrant
    from openledger.data.receipts import StoredRecord

__all__ = [
    "SNAPSHOT_LEAF_ENCODING",
    "Snapshot",
    "build_tree",
    "make_manifest",
    "manifest_hash",
    "snapshot_root",
    "verify_proof",
]

SNAPSHOT_LEAF_ENCODING = ("bytes32", "address")
"""ABI types of a snapshot leaf: ``(recordHash, contributor)``."""

_LEAF_SIZE = 52  # 32-byte record hash + 20-byte address


def build_tree(leaves: bytes) -> StandardMerkleTree:
    """Build the snapshot tree from packed ``hash32 || address20`` leaves.

    NOTE: abi.encode(bytes32, address) is the hash followed by the address left-padded to
    32 bytes, so leaf hashes are computed straight from the packed bytes, without eth_abi.
    """
    pad = bytes(12)
    values: list[tuple[bytes, bytes]] = []
    hashes: list[bytes] = []
    for offset in range(0, len(leaves), _LEAF_SIZE):
        digest, address = leaves[offset : offset + 32], leaves[offset + 32 : offset + 52]
        values.append((digest, address))
        hashes.append(keccak256(keccak256(digest + pad + address)))
    return StandardMerkleTree(values, SNAPSHOT_LEAF_ENCODING, hashes)


def snapshot_root(leaves: bytes) -> Hash32:
    """Return the root over packed ``hash32 || address20`` leaves without keeping the tree."""
    pad = bytes(12)
    hashes = [
        keccak256(keccak256(leaves[o : o + 32] + pad + leaves[o + 32 : o + 52]))
        for o in range(0, len(leaves), _LEAF_SIZE)
    ]
    return Hash32(to_hex(root_of_leaves(hashes)))


def verify_proof(root: str | bytes, record_hash: str | bytes, contributor: str, proof: Any) -> bool:
    """Check that ``(record_hash, contributor)`` is a leaf of the snapshot with ``root``.

    Args:
        root: The snapshot root.
        record_hash: The record hash (32 bytes or ``0x``-hex).
        contributor: The contributor address.
        proof: From :meth:`Snapshot.proof`.

    Returns:
        ``True`` if the proof holds; ``False`` for a wrong or malformed proof or leaf.
    """
    try:
        leaf = leaf_hash((from_hex(record_hash, size=32), contributor), SNAPSHOT_LEAF_ENCODING)
    except CryptoError:
        return False
    return verify_leaf_proof(root, leaf, list(proof))


@dataclass
class Snapshot:
    """An immutable version of a datanet: its accepted records at one moment.

    Attributes:
        id: Snapshot number within the datanet (1, 2, ...).
        root: OpenZeppelin StandardMerkleTree root over ``(recordHash, contributor)`` leaves.
        count: Number of records.
        created_at: Unix time of creation.
        manifest: The JSON manifest (datanet, schema hash, count, root, contributors).
        manifest_hash: keccak256 of the manifest's canonical JSON.
    """

    id: int
    root: Hash32
    count: int
    created_at: float
    manifest: dict[str, Any]
    manifest_hash: Hash32
    _leaves: bytes = field(repr=False)
    _record_ids: array[int] = field(repr=False)
    _datanet: Any = field(repr=False, default=None)
    _tree: StandardMerkleTree | None = field(repr=False, default=None)
    _positions: dict[bytes, int] | None = field(repr=False, default=None)

    @property
    def contributors(self) -> dict[Address, int]:
        """Records per contributor in this snapshot."""
        return {Address(k): int(v) for k, v in self.manifest["contributors"].items()}

    @property
    def datanet_id(self) -> Hash32:
        """The datanet this snapshot belongs to."""
        return Hash32(self.manifest["datanet_id"])

    def _index(self) -> tuple[StandardMerkleTree, dict[bytes, int]]:
        if self._tree is None or self._positions is None:
            self._tree = build_tree(self._leaves)
            self._positions = {v[0]: i for i, v in enumerate(self._tree.values)}
        return self._tree, self._positions

    def leaf(self, record_hash: str | bytes) -> tuple[Hash32, Address]:
        """Return the ``(record_hash, contributor)`` leaf of a record in this snapshot.

        Raises:
            DataNotFoundError: If the record is not in this snapshot.
        """
        digest = from_hex(record_hash, size=32, what="record_hash")
        _, positions = self._index()
        if digest not in positions:
            raise DataNotFoundError(f"record {to_hex(digest)} is not in snapshot {self.id}")
        offset = positions[digest] * _LEAF_SIZE + 32
        return Hash32(to_hex(digest)), to_checksum_address(self._leaves[offset : offset + 20])

    def proof(self, record_hash: str | bytes) -> list[Hash32]:
        """Return the Merkle proof of a record's leaf against :attr:`root`.

        Raises:
            DataNotFoundError: If the record is not in this snapshot.
        """
        self.leaf(record_hash)
        tree, positions = self._index()
        return tree.proof(positions[from_hex(record_hash, size=32)])

    def multiproof(self, record_hashes: list[str] | list[bytes]) -> MultiProof:
        """Return one proof for several records (for ``MerkleProof.multiProofVerify``).

        Raises:
            DataNotFoundError: If a record is not in this snapshot.
        """
        for digest in record_hashes:
            self.leaf(digest)
        tree, positions = self._index()
        return tree.multiproof([positions[from_hex(d, size=32)] for d in record_hashes])

    def record_hashes(self) -> list[Hash32]:
        """Return the hashes of the records in this snapshot, in store order."""
        return [to_hex(self._leaves[o : o + 32]) for o in range(0, len(self._leaves), 52)]  # type: ignore[misc]

    def records(self, *, grant: AccessGrant | None = None) -> Iterator[StoredRecord]:
        """Iterate the snapshot's records (a private datanet needs a valid grant).

        Raises:
            DataError: If the snapshot was not opened from a datanet.
        """
        if self._datanet is None:
            raise DataNotFoundError("this snapshot is detached from its datanet; use Datanet.open")
        return self._datanet._records_by_ids(self._record_ids, grant=grant)  # type: ignore[no-any-return]

    def get(self, record_hash: str | bytes, *, grant: AccessGrant | None = None) -> StoredRecord:
        """Return one record of this snapshot by hash (a private datanet needs a valid grant).

        Raises:
            DataNotFoundError: The record is not in this snapshot, or the snapshot is detached.
            AccessDeniedError: A private datanet and no valid grant.
        """
        self.leaf(record_hash)  # NOTE: raises for a record outside this snapshot
        if self._datanet is None:
            raise DataNotFoundError("this snapshot is detached from its datanet; use Datanet.open")
        return self._datanet.get(record_hash, grant=grant)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return self.count

    def _repr_html_(self) -> str:
        from openledger.data.html import snapshot_html

        return snapshot_html(self)


def make_manifest(
    base: Mapping[str, Any], leaves: bytes, root: str, created_at: float
) -> dict[str, Any]:
    """Return the snapshot manifest for packed leaves (contributor counts included)."""
    counts: dict[str, int] = {}
    for offset in range(32, len(leaves), _LEAF_SIZE):
        address = leaves[offset : offset + 20]
        counts[address.hex()] = counts.get(address.hex(), 0) + 1
    contributors = {to_checksum_address(bytes.fromhex(k)): v for k, v in sorted(counts.items())}
    return {
        **base,
        "format": "openledger.snapshot/1",
        "leaf_encoding": list(SNAPSHOT_LEAF_ENCODING),
        "count": len(leaves) // _LEAF_SIZE,
        "root": root,
        "contributors": contributors,
        "created_at": created_at,
    }


def manifest_hash(manifest: Mapping[str, Any]) -> Hash32:
    """Return keccak256 of the manifest in canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return keccak256_hex(text.encode("utf-8"))


def pack_leaf(record_hash: bytes, contributor: str) -> bytes:
    """Return the packed 52-byte form ``hash32 || address20`` of one leaf."""
    return record_hash + from_hex(contributor, size=20)
