"""Fixtures for openledger.train: a tiny Llama that can memorise, and recognisable records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, Snapshot


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module(one_torch_thread: None) -> None:
    """Every module here runs on one torch thread (see tests/conftest.py)."""


WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy"]


def colour_records(count: int = 4) -> list[InstructionRecord]:
    """Records whose answers are recognisable from their prompts (``Code red?`` -> ``RED ok.``)."""
    return [
        InstructionRecord(instruction=f"Code {w}?", response=f"{w.upper()} ok.")
        for w in WORDS[:count]
    ]


@pytest.fixture(name="colour_records", scope="session")
def colour_records_fixture() -> Callable[[int], list[InstructionRecord]]:
    """The :func:`colour_records` factory."""
    return colour_records


@pytest.fixture
def colour_snapshot(tmp_path: Path) -> Iterator[Snapshot]:
    """A public datanet with eight colour records from two contributors, snapshotted."""
    alice, bob = Account.create(), Account.create()
    records = colour_records(8)
    datanet = Datanet.create(tmp_path / "dn", name="colours", schema=InstructionRecord)
    datanet.contribute(records[:5], contributor=alice)
    datanet.contribute(records[5:], contributor=bob)
    yield datanet.snapshot()
    datanet.close()
