"""The interface every datanet store implements.

::

    DatanetStore ─┬─ Store          (store.py: one SQLite file, the embedded default)
                  └─ PostgresStore  (store_postgres.py: a schema in a PostgreSQL database)

The data layer speaks one SQL dialect through :class:`Connection` (``?`` placeholders,
``INSERT ... ON CONFLICT``, ``RETURNING``), which SQLite runs as written and the PostgreSQL
connection translates. Both stores hold the same tables, built by the same numbered
migrations (``store.MIGRATIONS``), and give the same guarantee to writers: a
:meth:`DatanetStore.write` block runs alone among the writers of its datanet, all of it or
none of it, so checks made inside it (nonces, duplicates, commitments, request statuses)
still hold when it commits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

__all__ = ["Connection", "Cursor", "DatanetStore", "insert_rows"]


class Cursor(Protocol):
    """The result of :meth:`Connection.execute` (``sqlite3.Cursor`` is one)."""

    @property
    def rowcount(self) -> int:
        """Rows changed by the statement (summed over ``executemany``)."""

    def fetchone(self) -> Any:
        """The next row, or ``None``."""

    def fetchall(self) -> list[Any]:
        """Every remaining row."""

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows."""


class Connection(Protocol):
    """What the data layer calls on a store's connection (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor:
        """Run one statement with ``?`` placeholders."""

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        """Run one statement once per parameter row."""


class DatanetStore(ABC):
    """Where one datanet's tables live; a :class:`~openledger.data.Datanet` holds one.

    Attributes:
        conn: The connection; outside :meth:`write` and :meth:`read`, each statement is
            its own transaction.
        location: Where the store is, for people: a folder, or a URL without its password.
    """

    conn: Connection
    location: str

    @abstractmethod
    def write(self) -> AbstractContextManager[Connection]:
        """Run the block as one write transaction, alone among this datanet's writers.

        Any error rolls it back; errors of the database, a failed commit included, come
        out as :class:`~openledger.exceptions.StoreError` with nothing of the block stored.
        """

    @abstractmethod
    def read(self) -> AbstractContextManager[Connection]:
        """Run the block in one read transaction (one consistent view across statements)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def get_meta(self) -> dict[str, str]:
        """Return every ``meta`` key and value."""
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())


def insert_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert many rows at once: PostgreSQL's ``COPY`` where the connection has it,
    one prepared ``INSERT`` per row otherwise (SQLite, in-process, is fast at that)."""
    copy_rows = getattr(conn, "copy_rows", None)
    if copy_rows is not None:
        copy_rows(table, columns, rows)
        return
    marks = ", ".join("?" * len(columns))
    conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
