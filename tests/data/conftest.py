"""Shared fixtures for datanet tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.data.postgres_server import postgres  # noqa: F401  (the session's server)

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord

ALICE_KEY = "0x" + "a1" * 32
BOB_KEY = "0x" + "b2" * 32
OWNER_KEY = "0x" + "0e" * 32


@pytest.fixture
def alice() -> Account:
    return Account.from_key(ALICE_KEY)


@pytest.fixture
def bob() -> Account:
    return Account.from_key(BOB_KEY)


@pytest.fixture
def owner() -> Account:
    return Account.from_key(OWNER_KEY)


@pytest.fixture
def sqlite_dn(tmp_path: Path, owner: Account) -> Datanet:
    """An empty public datanet in a folder (for what only the SQLite file has)."""
    datanet = Datanet.create(tmp_path / "dn", name="medqa", schema=InstructionRecord, owner=owner)
    yield datanet  # type: ignore[misc]
    datanet.close()


@pytest.fixture
def dn(request: pytest.FixtureRequest, tmp_path: Path, owner: Account) -> Datanet:
    """An empty public datanet; in a fresh PostgreSQL schema under
    ``OPENLEDGER_TEST_STORE=postgres`` (a way to run the tests built on it on that store)."""
    where: str | Path = tmp_path / "dn"
    if os.environ.get("OPENLEDGER_TEST_STORE") == "postgres":
        where = request.getfixturevalue("postgres").fresh_url()
    datanet = Datanet.create(where, name="medqa", schema=InstructionRecord, owner=owner)
    yield datanet  # type: ignore[misc]
    datanet.close()
