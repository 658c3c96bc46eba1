"""Editing a datanet's store behind its back (tamper tests), on either store.

A folder datanet is edited through a second SQLite connection to its file; a PostgreSQL
one through a second connection to its schema, as someone with database access would.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from openledger.data import Datanet
from openledger.data.store import STORE_FILE
from openledger.data.store_postgres import PostgresStore

__all__ = ["edit_store", "read_store"]


def edit_store(dn: Datanet, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run ``(sql, params)`` statements on ``dn``'s store in one transaction, then commit."""
    if isinstance(dn.path, str):
        store = PostgresStore(dn.path)
        with store.write() as conn:
            for sql, params in statements:
                conn.execute(sql, params)
        store.close()
        return
    conn = sqlite3.connect(dn.path / STORE_FILE)
    for sql, params in statements:
        conn.execute(sql, params)
    conn.commit()
    conn.close()


def read_store(dn: Datanet, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first row of a query on ``dn``'s store, read through a separate connection."""
    if isinstance(dn.path, str):
        store = PostgresStore(dn.path)
        row = store.conn.execute(sql, params).fetchone()
        store.close()
        return row
    conn = sqlite3.connect(dn.path / STORE_FILE)
    row = conn.execute(sql, params).fetchone()
    conn.close()
    return row
