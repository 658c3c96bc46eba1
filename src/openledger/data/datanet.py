"""The :class:`Datanet` facade: a community dataset in one folder, with provenance.

::

    Datanet ── ingest (validate, encode, hash, rules) ── signing (EIP-712)
       │                                                      │
       └── store (SQLite file or PostgreSQL schema, one transaction per contribution) ── snapshot
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from openledger.crypto import Account
from openledger.data import contribution
from openledger.data.access import AccessGrant
from openledger.data.canonical import record_hash as _record_hash
from openledger.data.commitments import check_commitments, store_commitments
from openledger.data.datanet_exports import ExportMethods
from openledger.data.datanet_governance import GovernanceMethods
from openledger.data.datanet_reads import ReadMethods
from openledger.data.datanet_sealing import SealingMethods
from openledger.data.datanet_snapshots import SnapshotMethods
from openledger.data.ingest import (
    DEFAULT_MAX_RECORD_BYTES,
    PreparedBatch,
    first_positions,
    prepare_batch,
)
from openledger.data.neardup import MinHasher, NearDuplicateIndex
from openledger.data.opening import connect_store, open_store
from openledger.data.quality import QualityRule
from openledger.data.receipts import ContributionReceipt
from openledger.data.schemas import Record
from openledger.data.sealing import CIPHER
from openledger.data.settings import bind_id, check_rules, validated_settings
from openledger.data.signing import (
    SignedContribution,
    as_account_address,
    sign_contribution,
)
from openledger.data.store import Durability
from openledger.data.store_api import DatanetStore
from openledger.data.store_postgres import PostgresStore
from openledger.exceptions import AccessDeniedError, ConfigError, StoreError
from openledger.types import Address, Hash32

__all__ = ["ContributionGate", "Datanet"]

ContributionGate = Callable[[Address], "str | None"]
"""A check of each contributor before anything is stored: ``None`` admits, a string is the
reason for refusing (e.g. ``protocol.bonds.contribution_gate(datanet_id)``: a bond on chain)."""

Visibility = Literal["public", "private"]
DuplicatePolicy = Literal["error", "skip"]
GrantMode = Literal["bearer", "bound"]
_CHUNK = 900  # stays under SQLite's default limit of bound parameters per statement


class Datanet(ReadMethods, SnapshotMethods, GovernanceMethods, ExportMethods, SealingMethods):
    """A community dataset stored in one folder, every record traceable to its contributor.

    Create one with :meth:`create`, reopen it with :meth:`open`. The folder holds a SQLite
    file; a ``postgresql://`` URL in its place keeps the datanet in PostgreSQL instead
    (many writers on many machines, the ``postgres`` extra). Not thread-safe; open one
    ``Datanet`` per thread or process (many may read while one writes).

    Attributes:
        contribution_gate: Checked for every contribution before anything is stored
            (:data:`ContributionGate`; ``None``, the default, admits everyone the datanet's
            visibility admits). It belongs to this open handle, not to the folder: set it
            wherever contributions are accepted, e.g. to require a bond on chain.
    """

    contribution_gate: ContributionGate | None = None

    def __init__(
        self,
        store: DatanetStore,
        schema: type[Record],
        rules: Sequence[QualityRule] = (),
        encryption_key: bytes | str | None = None,
    ) -> None:
        self._store = store
        self.schema = schema
        self.rules: tuple[QualityRule, ...] = tuple(rules)
        meta = store.get_meta()
        self.id = Hash32(meta["id"])
        self.name = meta["name"]
        self.visibility: Visibility = meta["visibility"]  # type: ignore[assignment]
        self.owner: Address | None = Address(meta["owner"]) if meta.get("owner") else None
        self.max_record_bytes = int(meta["max_record_bytes"])
        self.duplicates: DuplicatePolicy = meta["duplicates"]  # type: ignore[assignment]
        self.grants: GrantMode = "bound" if meta.get("grants") == "bound" else "bearer"
        threshold = float(meta["near_duplicate_threshold"])
        self._near = NearDuplicateIndex(MinHasher(), threshold) if threshold > 0 else None
        self.path: Path | str = (
            store.url if isinstance(store, PostgresStore) else Path(store.location)
        )
        self.encrypted = meta.get("encryption") == CIPHER
        self._cipher = self._make_cipher(meta, encryption_key)

    # -- creating and opening ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str,
        schema: type[Record],
        visibility: Visibility = "public",
        owner: Account | str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        duplicates: DuplicatePolicy = "error",
        near_duplicate_threshold: float = 0.8,
        rules: Sequence[QualityRule] = (),
        durability: Durability = "full",
        grants: GrantMode = "bearer",
        encryption_key: bytes | str | None = None,
    ) -> Datanet:
        """Create a new, empty datanet in the folder ``path``.

        Args:
            path: Folder to create (it may exist but must not hold a datanet), or a
                PostgreSQL URL, ``postgresql://user@host/database?datanet=schema``: the
                schema is created if missing and must not hold a datanet yet.
            name: Human-readable name.
            schema: Record class, a built-in such as ``InstructionRecord`` or a subclass.
            visibility: ``"public"`` (anyone reads) or ``"private"`` (reads need a grant).
            owner: Account or address that approves access; required when private.
            max_record_bytes: Size limit of one record's canonical encoding.
            duplicates: ``"error"`` refuses a contribution holding a stored record;
                ``"skip"`` drops such records and stores the rest.
            near_duplicate_threshold: MinHash Jaccard estimate from which records are
                flagged as near-duplicates; 0 turns the check off.
            rules: Quality rules every contributed record must pass (not persisted).
            durability: ``"full"`` (default): every commit is fsync'd before a receipt or
                snapshot is returned; ``"normal"``: faster, but a power loss may roll back
                the last commits (a process crash never does). Not persisted.
            grants: ``"bound"``: a read must present a grant bound to its grantee's key
                (``grant.bind(account)``), which signs a fresh challenge at each read;
                ``"bearer"`` (default): the grant alone reads. Persisted.
            encryption_key: 32 bytes the owner keeps: payloads are then sealed with
                AES-256-GCM, and reading or contributing needs the key (see
                :mod:`openledger.data.sealing`). Only a check value of it is stored.

        Returns:
            The open datanet.

        Raises:
            ConfigError: For an invalid argument, naming it.
            StoreError: If ``path`` already holds a datanet.
        """
        settings = validated_settings(
            name,
            schema,
            visibility,
            owner,
            max_record_bytes,
            duplicates,
            near_duplicate_threshold,
            grants,
            encryption_key,
        )
        check_rules(rules)
        store = connect_store(path, create=True, durability=durability)
        if store.get_meta():
            store.close()
            raise StoreError(f"{store.location} already holds a datanet; use Datanet.open")
        bind_id(settings)
        with store.write() as conn:
            conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(settings.items()))
        return cls(store, schema, rules, encryption_key)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        schema: type[Record] | None = None,
        rules: Sequence[QualityRule] = (),
        durability: Durability = "full",
        allow_modules: Sequence[str] = (),
        encryption_key: bytes | str | None = None,
    ) -> Datanet:
        """Open an existing datanet.

        Args:
            path: The datanet folder, or the PostgreSQL URL it was created at.
            schema: The record class; needed only when a user subclass cannot be imported
                by its stored path. It must hash to the stored schema hash.
            rules: Quality rules for contributions made through this handle.
            durability: ``"full"`` or ``"normal"``, as for :meth:`create`.
            allow_modules: Modules (or packages) from which a user schema stored by its
                import path may be imported. The file names the module, so nothing else
                is imported: built-in schemas need nothing, others ``schema=`` or this.
            encryption_key: The owner's key of a datanet created with one; without it
                counts, hashes, snapshots and proofs work, records do not.

        Raises:
            StoreError: If ``path`` is not a datanet or is unusable.
            SchemaError: If the schema cannot be found or its fields changed.
            AccessDeniedError: If ``encryption_key`` is not the datanet's key.
        """
        check_rules(rules)
        store, found = open_store(path, durability, schema, allow_modules)
        try:
            return cls(store, found, rules, encryption_key)
        except (ConfigError, AccessDeniedError):
            store.close()
            raise

    def close(self) -> None:
        """Close the underlying store."""
        self._store.close()

    def __enter__(self) -> Datanet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contributing --------------------------------------------------------------------

    def next_nonce(self, contributor: Account | str) -> int:
        """Return the nonce the contributor's next signed contribution must carry."""
        address = as_account_address(contributor, what="contributor")
        row = self._store.conn.execute(
            "SELECT COALESCE(MAX(nonce) + 1, 0) FROM contributions WHERE contributor = ?",
            (address,),
        ).fetchone()
        return int(row[0])

    def sign(self, records: Iterable[Any], *, contributor: Account) -> SignedContribution:
        """Sign records for this datanet without storing them (to contribute later or elsewhere)."""
        batch = self._prepare(records)
        return sign_contribution(
            batch.hashes,
            datanet_id=self.id,
            contributor=contributor,
            nonce=self.next_nonce(contributor),
        )

    def contribute(
        self,
        records: Iterable[Any],
        *,
        contributor: Account | None = None,
        signed: SignedContribution | None = None,
        grant: AccessGrant | None = None,
    ) -> list[ContributionReceipt]:
        """Validate, sign (or verify), and store records in one transaction.

        Args:
            records: Dicts of fields or instances of the datanet's schema.
            contributor: Sign here with this account (the usual path).
            signed: Or a contribution signed elsewhere (see :meth:`sign`); only verified.
            grant: For a private datanet, the contributor's own access grant (the owner
                needs none): whether a record is already stored is private too.

        Returns:
            One receipt per stored record (skipped duplicates have none).

        Raises:
            SchemaError, QualityError, DuplicateRecordError, SignatureError, NonceError:
                On bad input; nothing is stored then. ``DuplicateRecordError`` also when
                another contributor committed to a record first (see :meth:`commit`).
            AccessDeniedError: A private datanet and no valid grant of the contributor, or
                the :attr:`contribution_gate` refused the contributor.
        """
        if (contributor is None) == (signed is None):
            raise ConfigError(
                "pass exactly one of contributor=Account or signed=SignedContribution"
            )
        author = signed.contributor if signed is not None else contributor
        address = as_account_address(author, what="contributor")
        self._check_write(address, grant)
        gate = self.contribution_gate
        if gate is not None and (reason := gate(address)) is not None:
            raise AccessDeniedError(
                f"datanet {self.name!r} refuses contributions of {address}: {reason}"
            )
        if self.encrypted:
            self._opener()  # refuses before any work when the key is missing
        batch = self._prepare(records)
        keep = first_positions(batch.hashes, skip=self.duplicates == "skip")
        signatures = self._near_signatures(batch)
        with self._store.write() as conn:
            keep = contribution.drop_stored(
                conn, batch, keep, skip=self.duplicates == "skip", name=self.name
            )
            if signed is None:
                if not keep:
                    return []
                batch = batch.keep(keep)
                signatures = None if signatures is None else signatures[keep]
                keep = list(range(len(batch)))
                signed = self._sign_in(conn, batch, contributor)
            else:
                contribution.verify_signed(conn, batch, signed, datanet_id=self.id, name=self.name)
            check_commitments(conn, batch.hashes, keep, signed.contributor)
            try:
                return contribution.insert_batch(
                    conn, self._sealed(batch), keep, signed, signatures, self._near
                )
            except BaseException:
                self._reset_near_index()
                raise

    def commit(
        self,
        commitments: Iterable[str | bytes],
        *,
        contributor: Account | str,
        ttl_seconds: int = 3600,
    ) -> int:
        """Bind records to ``contributor`` before revealing them (see :mod:`.commitments`).

        Args:
            commitments: ``commitment_of(record_hash, contributor)`` per record, computed
                where the records are; they reveal nothing about the records.
            contributor: Whose records they are.
            ttl_seconds: How long the commitments hold if the records never arrive.

        Returns:
            How many new commitments were stored.
        """
        address = as_account_address(contributor, what="contributor")
        with self._store.write() as conn:
            return store_commitments(conn, list(commitments), address, ttl_seconds)

    def _sign_in(
        self, conn: Any, batch: PreparedBatch, contributor: Account | None
    ) -> SignedContribution:
        if not isinstance(contributor, Account):
            raise ConfigError(
                f"contributor must be an openledger Account, got {type(contributor).__name__}"
            )
        nonce = contribution.next_nonce(conn, contributor.address)
        return sign_contribution(
            batch.hashes, datanet_id=self.id, contributor=contributor, nonce=nonce
        )

    def _reset_near_index(self) -> None:
        # NOTE: the index may now hold ids of a rolled-back batch; start over from the store.
        if self._near is not None:
            self._near = NearDuplicateIndex(self._near.hasher, self._near.threshold)

    def _prepare(self, records: Iterable[Any]) -> PreparedBatch:
        return prepare_batch(
            self.schema,
            records,
            max_record_bytes=self.max_record_bytes,
            rules=self.rules,
            with_text=self._near is not None,
        )

    def _near_signatures(self, batch: PreparedBatch) -> Any:
        return None if self._near is None else self._near.hasher.signatures(batch.texts)

    # -- reading ---------------------------------------------------------------------------

    def record_hash(self, record: Any) -> Hash32:
        """Return the hash the datanet would give ``record`` (validated against the schema)."""
        return _record_hash(self._prepare([record]).records[0])

    # -- display --------------------------------------------------------------------------

    def __repr__(self) -> str:
        schema = self.schema.schema_id
        where = self._store.location
        return f"Datanet(name={self.name!r}, schema={schema!r}, path={where!r})"

    def _repr_html_(self) -> str:
        from openledger.data.html import datanet_html

        return datanet_html(self)
