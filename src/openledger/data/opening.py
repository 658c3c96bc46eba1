"""Opening a datanet's store: which store a location names, and the checks that come
before trusting anything in it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeAlias

from openledger.data.schemas import Record, resolve_schema, schema_hash
from openledger.data.settings import unbound_settings
from openledger.data.store import Durability, Store
from openledger.data.store_api import DatanetStore
from openledger.data.store_postgres import PostgresStore, is_postgres_url
from openledger.exceptions import SchemaError, StoreError

__all__ = ["connect_store", "open_store"]

Location: TypeAlias = "str | os.PathLike[str]"


def connect_store(location: Location, *, create: bool, durability: Durability) -> DatanetStore:
    """Return the store at ``location``: a ``postgresql://`` URL, or else a folder (SQLite)."""
    if is_postgres_url(location):
        return PostgresStore(str(location), create=create, durability=durability)
    return Store(location, create=create, durability=durability)


def open_store(
    path: Location,
    durability: Durability,
    schema: type[Record] | None,
    allow_modules: Sequence[str],
) -> tuple[DatanetStore, type[Record]]:
    """Open the store and find its schema; close it again on any refusal.

    Raises:
        StoreError: Not a datanet, incomplete, or its settings were edited in the file.
        SchemaError: The schema is not allowed, cannot be found, or its fields changed.
    """
    store = connect_store(path, create=False, durability=durability)
    try:
        return store, _schema_of(store, store.location, schema, allow_modules)
    except BaseException:
        store.close()
        raise


def _schema_of(
    store: DatanetStore,
    path: str,
    schema: type[Record] | None,
    allow_modules: Sequence[str],
) -> type[Record]:
    meta = store.get_meta()
    if "id" not in meta:
        raise StoreError(f"{path} holds an incomplete datanet (no metadata)")
    altered = unbound_settings(meta)
    if altered is not None:
        raise StoreError(f"{path} was tampered with: {altered}")
    found = schema or resolve_schema(meta["schema_id"], meta["schema_ref"], allow_modules)
    if schema_hash(found) != meta["schema_hash"]:
        raise SchemaError(
            f"schema {found.__name__} does not match the datanet's schema "
            f"{meta['schema_id']} (its fields changed); open with the original class"
        )
    return found
