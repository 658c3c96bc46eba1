"""The snapshot and audit methods of :class:`~openledger.data.Datanet`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from openledger.data import queries
from openledger.data.audit import AuditReport, audit
from openledger.data.schemas import Record, schema_hash
from openledger.data.snapshot import Snapshot
from openledger.data.store_api import DatanetStore
from openledger.types import Hash32

if TYPE_CHECKING:
    from openledger.data.datanet import Datanet

__all__ = ["SnapshotMethods"]


class SnapshotMethods:
    """Methods of :class:`~openledger.data.Datanet` that freeze and re-check its records."""

    _store: DatanetStore
    id: Hash32
    name: str
    schema: type[Record]

    def _datanet(self) -> Datanet:
        return cast("Datanet", self)

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Freeze the currently accepted records into a new immutable snapshot.

        Raises:
            DataNotFoundError: If there are no accepted records.
        """
        with self._store.write() as conn:
            snapshot_id = queries.insert_snapshot(conn, self._manifest_base, self.name)
        return self.snapshot_at(snapshot_id)

    def _manifest_base(self, snapshot_id: int) -> dict[str, Any]:
        return {
            "datanet_id": self.id,
            "name": self.name,
            "schema_id": self.schema.schema_id,
            "schema_hash": schema_hash(self.schema),
            "snapshot_id": snapshot_id,
        }

    def snapshot_at(self, snapshot_id: int) -> Snapshot:
        """Reopen a snapshot by id.

        Raises:
            DataNotFoundError: If there is no such snapshot.
        """
        return queries.load_snapshot(self._store.conn, snapshot_id, self._datanet())

    def snapshots(self) -> list[int]:
        """Return the ids of all snapshots, oldest first."""
        return [int(r[0]) for r in self._store.conn.execute("SELECT id FROM snapshots ORDER BY id")]

    def latest_snapshot(self) -> Snapshot | None:
        """Return the newest snapshot, or ``None`` if there is none."""
        ids = self.snapshots()
        return self.snapshot_at(ids[-1]) if ids else None

    def audit(self, *, protocol: Any = None, chain_datanet_id: str | None = None) -> AuditReport:
        """Re-derive from signatures everything that decides who is paid, and compare.

        Checks record hashes, contribution roots and signers, record contributors,
        statuses against signed reviews, snapshot leaves, roots and manifests, and the
        settings the id is derived from (see :mod:`openledger.data.audit`).

        Args:
            protocol: An ``openledger.chain.Protocol``; with ``chain_datanet_id``, every
                snapshot root published on chain must be a snapshot of this store.
            chain_datanet_id: This datanet's id in the on-chain ``DatanetRegistry``.

        Returns:
            The report; ``report.ok`` is true when nothing is inconsistent, and each
            problem names the row and what is wrong with it.
        """
        with self._store.read() as conn:
            meta = self._store.get_meta()
            return audit(
                conn,
                self.id,
                self.schema,
                meta,
                protocol=protocol,
                chain_datanet_id=chain_datanet_id,
                opener=self._datanet()._audit_opener(),
            )
