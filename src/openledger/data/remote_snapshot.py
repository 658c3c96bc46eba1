"""A snapshot of a hosted datanet, whose proofs are checked here against its root.

The service could send a wrong proof, a wrong leaf or a manifest that does not hold
together; none of them passes the checks below unnoticed. What a client cannot check from
the service alone is the root itself: compare it with the root published on chain
(``DatanetRegistry``), which the service cannot change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openledger.crypto import from_hex, to_hex
from openledger.data.snapshot import manifest_hash, pack_leaf, snapshot_root, verify_proof
from openledger.exceptions import StoreError
from openledger.types import Address, Hash32

if TYPE_CHECKING:
    from openledger.data.access import AccessGrant
    from openledger.data.receipts import StoredRecord
    from openledger.data.remote import RemoteDatanet

__all__ = ["RemoteSnapshot"]


@dataclass
class RemoteSnapshot:
    """An immutable version of a hosted datanet (see :class:`~openledger.data.Snapshot`).

    Attributes:
        id: Snapshot number within the datanet.
        root: The Merkle root over ``(recordHash, contributor)`` leaves.
        count: Number of records.
        created_at: Unix time of creation.
        manifest: The JSON manifest; its hash, root and count were checked on arrival.
        manifest_hash: keccak256 of the manifest's canonical JSON.
    """

    id: int
    root: Hash32
    count: int
    created_at: float
    manifest: dict[str, Any]
    manifest_hash: Hash32
    _remote: RemoteDatanet = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any], remote: RemoteDatanet) -> RemoteSnapshot:
        """The snapshot the service sent, once its manifest holds together.

        Raises:
            StoreError: The manifest does not hash to its hash, or names another root,
                count or datanet.
        """
        snap = cls(
            int(body["id"]),
            Hash32(body["root"]),
            int(body["count"]),
            float(body["created_at"]),
            dict(body["manifest"]),
            Hash32(body["manifest_hash"]),
            remote,
        )
        manifest = snap.manifest
        if (
            manifest_hash(manifest) != snap.manifest_hash
            or manifest.get("root") != snap.root
            or manifest.get("count") != snap.count
            or manifest.get("datanet_id") != remote.id
            or manifest.get("snapshot_id") != snap.id
        ):
            raise StoreError(
                f"snapshot {snap.id} from {remote.url}: its manifest does not hold together "
                "(hash, root, count or datanet)"
            )
        return snap

    @property
    def contributors(self) -> dict[Address, int]:
        """Records per contributor in this snapshot."""
        return {Address(k): int(v) for k, v in self.manifest["contributors"].items()}

    @property
    def datanet_id(self) -> Hash32:
        """The datanet this snapshot belongs to."""
        return Hash32(self.manifest["datanet_id"])

    def __len__(self) -> int:
        return self.count

    def _path(self, tail: str) -> str:
        return f"snapshots/{self.id}/{tail}"

    def leaf(
        self, record_hash: str | bytes, *, grant: AccessGrant | None = None
    ) -> tuple[Hash32, Address]:
        """Return a record's ``(record_hash, contributor)`` leaf, its proof checked here.

        Raises:
            DataNotFoundError: The record is not in this snapshot.
            StoreError: The service's proof does not hold against :attr:`root`.
        """
        return self._proven(record_hash, grant)[0]

    def proof(self, record_hash: str | bytes, *, grant: AccessGrant | None = None) -> list[Hash32]:
        """Return a record's Merkle proof against :attr:`root`, checked here first.

        A private datanet answers only holders of a valid grant.

        Raises:
            DataNotFoundError: The record is not in this snapshot.
            AccessDeniedError: A private datanet and no valid grant.
            StoreError: The service's proof does not hold against :attr:`root`.
        """
        return self._proven(record_hash, grant)[1]

    def _proven(
        self, record_hash: str | bytes, grant: AccessGrant | None
    ) -> tuple[tuple[Hash32, Address], list[Hash32]]:
        digest = to_hex(from_hex(record_hash, size=32, what="record_hash"))
        body = self._remote._request("GET", self._path(f"proofs/{digest}"), grant=grant)
        proof = [Hash32(h) for h in body["proof"]]
        contributor = Address(body["contributor"])
        if body["record_hash"] != digest or not verify_proof(self.root, digest, contributor, proof):
            raise StoreError(
                f"the service's proof of {digest} does not hold against snapshot {self.id}'s "
                f"root {self.root}"
            )
        return (Hash32(digest), contributor), proof

    def leaves(self, *, grant: AccessGrant | None = None) -> list[tuple[Hash32, Address]]:
        """Return every leaf in store order, checked here to give :attr:`root`.

        Raises:
            AccessDeniedError: A private datanet and no valid grant.
            StoreError: The leaves do not give the root.
        """
        found = self._remote._request("GET", self._path("leaves"), grant=grant)["data"]
        leaves = [(Hash32(h), Address(c)) for h, c in found]
        packed = b"".join(pack_leaf(from_hex(h, size=32), c) for h, c in leaves)
        if len(leaves) != self.count or (leaves and snapshot_root(packed) != self.root):
            raise StoreError(
                f"the leaves the service sent do not give snapshot {self.id}'s root {self.root}"
            )
        return leaves

    def record_hashes(self, *, grant: AccessGrant | None = None) -> list[Hash32]:
        """Return the hashes of the snapshot's records (leaves checked against the root)."""
        return [h for h, _ in self.leaves(grant=grant)]

    def get(self, record_hash: str | bytes, *, grant: AccessGrant | None = None) -> StoredRecord:
        """Return one record of this snapshot (its leaf proven first).

        Raises:
            DataNotFoundError: The record is not in this snapshot.
            AccessDeniedError: A private datanet and no valid grant.
        """
        self.leaf(record_hash, grant=grant)
        return self._remote.get(record_hash, grant=grant)
