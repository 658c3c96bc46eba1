"""Shared fixtures for datanet tests."""

from __future__ import annotations

from pathlib import Path

import pytest

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
def dn(tmp_path: Path, owner: Account) -> Datanet:
    datanet = Datanet.create(tmp_path / "dn", name="medqa", schema=InstructionRecord, owner=owner)
    yield datanet  # type: ignore[misc]
    datanet.close()
