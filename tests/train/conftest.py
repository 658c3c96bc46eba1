"""Fixtures for openledger.train: a tiny Llama that can memorise, and recognisable records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, Snapshot


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (and the CI machine has two shared cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose head is large enough (init range 0.3) to reach ~0 loss."""
    from openledger.models import save_tiny_model

    folder = tmp_path_factory.mktemp("train-tiny") / "llama"
    return save_tiny_model(folder, "llama", seed=1, initializer_range=0.3)


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
