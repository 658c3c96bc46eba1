"""The reading methods of :class:`~openledger.data.Datanet`: its records, whole or a page
at a time, behind the access check of a private datanet."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from openledger.data import queries
from openledger.data.access import AccessGrant
from openledger.data.receipts import StoredRecord
from openledger.data.schemas import Record
from openledger.data.store_api import DatanetStore
from openledger.exceptions import ConfigError

if TYPE_CHECKING:
    from openledger.data.queries import Opener

__all__ = ["ReadMethods"]


class ReadMethods:
    """Methods of :class:`~openledger.data.Datanet` that read its records."""

    # NOTE: annotations only: the methods come from GovernanceMethods and SealingMethods,
    # which a definition here would shadow (this class is first in Datanet's bases).
    _store: DatanetStore
    schema: type[Record]
    _check_read: Callable[[AccessGrant | None], None]
    _opener: Callable[[], Opener]

    def __len__(self) -> int:
        return int(self._store.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def records(
        self, *, grant: AccessGrant | None = None, include_rejected: bool = False
    ) -> Iterator[StoredRecord]:
        """Iterate stored records in arrival order.

        Raises:
            AccessDeniedError: For a private datanet without a valid grant.
        """
        self._check_read(grant)
        return queries.iter_records(
            self._store.conn,
            self.schema,
            include_rejected=include_rejected,
            opener=self._opener(),
        )

    def records_page(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        grant: AccessGrant | None = None,
        include_rejected: bool = False,
    ) -> tuple[list[StoredRecord], int]:
        """Return one page of :meth:`records` for readers elsewhere (a datanet service).

        Args:
            after: The cursor a previous page returned (0 for the first page).
            limit: Most records in the page (1 to 10,000).
            grant: For a private datanet, a valid grant.
            include_rejected: Also records that validators rejected.

        Returns:
            The records and the cursor of the next page (the same cursor when the page is
            empty: the reader has everything stored so far).

        Raises:
            AccessDeniedError: For a private datanet without a valid grant.
            ConfigError: For a negative cursor or a limit out of range.
        """
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ConfigError(f"after must be a cursor (an int >= 0), got {after!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ConfigError(f"limit must be an int in 1..10000, got {limit!r}")
        self._check_read(grant)
        return queries.page_records(
            self._store.conn,
            self.schema,
            after=after,
            limit=limit,
            include_rejected=include_rejected,
            opener=self._opener(),
        )

    def get(self, record_hash: str | bytes, *, grant: AccessGrant | None = None) -> StoredRecord:
        """Return one stored record by hash.

        Raises:
            AccessDeniedError: For a private datanet without a valid grant.
            DataNotFoundError: If no record has that hash.
        """
        self._check_read(grant)
        return queries.get_record(self._store.conn, self.schema, record_hash, self._opener())

    def _records_by_ids(
        self, ids: array[int], *, grant: AccessGrant | None
    ) -> Iterator[StoredRecord]:
        self._check_read(grant)
        return queries.iter_records_by_ids(self._store.conn, self.schema, ids, self._opener())
