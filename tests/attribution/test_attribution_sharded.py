"""Sharded index builds: the same bytes as one process, resumable, on a process pool and Ray."""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from tests.attribution.conftest import colour_records, make_snapshot, train

from openledger.attribution import InfluenceIndex
from openledger.crypto import Account
from openledger.data import Snapshot
from openledger.exceptions import AttributionInputError
from openledger.train import TrainingRun


@pytest.fixture(scope="module")
def trained(
    memorising_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Snapshot, TrainingRun]:
    folder = tmp_path_factory.mktemp("sharded")
    records = colour_records()
    snapshot = make_snapshot(folder / "dn", [records[:6], records[6:]], [Account.create()] * 2)
    return snapshot, train(memorising_llama_dir, snapshot, folder / "adapter", max_steps=4)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def build(trained: tuple[Snapshot, TrainingRun], folder: Path, **options: Any) -> InfluenceIndex:
    snapshot, run = trained
    # NOTE: a small batch_tokens makes several batches of these short records: several shards
    return InfluenceIndex.build(
        run.adapter, snapshot, output_dir=folder, progress=False, batch_tokens=64, **options
    )


def pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))


class Crash(Exception):
    """The build's process dying after some shards."""


class Counting:
    """An executor running tasks in this process, counting them; dies after ``limit``."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.calls = 0

    def map(self, fn: Callable[[Any], Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        for items in zip(*iterables, strict=True):
            if self.limit is not None and self.calls >= self.limit:
                raise Crash
            self.calls += 1
            yield fn(*items)


def test_a_sharded_build_writes_the_same_bytes(
    trained: tuple[Snapshot, TrainingRun], tmp_path: Path
) -> None:
    single = build(trained, tmp_path / "single")
    with pool() as executor:
        sharded = build(trained, tmp_path / "sharded", executor=executor, shards=3)
    assert digest(tmp_path / "single") == digest(tmp_path / "sharded")
    assert len(sharded) == len(single) == 10
    assert not (tmp_path / "sharded" / "shards").exists()
    report = sharded.attribute("Code red?", "RED ok.")
    assert (
        report.contributor_weights()
        == single.attribute("Code red?", "RED ok.").contributor_weights()
    )


def test_an_interrupted_build_resumes_with_the_shards_left(
    trained: tuple[Snapshot, TrainingRun], tmp_path: Path
) -> None:
    build(trained, tmp_path / "single")
    with pytest.raises(Crash):
        build(trained, tmp_path / "resumed", executor=Counting(limit=1), shards=3)
    assert [p.name for p in (tmp_path / "resumed" / "shards").iterdir()] == ["0-0.npy"]
    rest = Counting()
    build(trained, tmp_path / "resumed", executor=rest, shards=3)
    assert rest.calls == 2
    assert digest(tmp_path / "single") == digest(tmp_path / "resumed")


def test_a_sharded_build_needs_a_folder_and_a_shard(
    trained: tuple[Snapshot, TrainingRun], tmp_path: Path
) -> None:
    snapshot, run = trained
    with pytest.raises(AttributionInputError, match="output_dir"):
        InfluenceIndex.build(run.adapter, snapshot, executor=Counting(), progress=False)
    with pytest.raises(AttributionInputError, match="shards must be >= 1"):
        build(trained, tmp_path / "none", executor=Counting(), shards=0)


def test_ray_tasks_write_the_same_bytes(
    trained: tuple[Snapshot, TrainingRun], tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from openledger.attribution import RayExecutor

    build(trained, tmp_path / "single")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        build(trained, tmp_path / "ray", executor=RayExecutor(num_cpus=1), shards=2)
    finally:
        ray.shutdown()
    assert digest(tmp_path / "single") == digest(tmp_path / "ray")


def test_16_bit_shards_write_the_same_bytes_and_resume(
    trained: tuple[Snapshot, TrainingRun], tmp_path: Path
) -> None:
    fast = {"compute_dtype": "bfloat16", "storage_dtype": "bfloat16"}
    single = build(trained, tmp_path / "single", **fast)
    assert single.grads[0].dtype.itemsize == 2
    with pytest.raises(Crash):
        build(trained, tmp_path / "resumed", executor=Counting(limit=2), shards=3, **fast)
    rest = Counting()
    resumed = build(trained, tmp_path / "resumed", executor=rest, shards=3, **fast)
    assert rest.calls == 1
    assert digest(tmp_path / "single") == digest(tmp_path / "resumed")
    assert resumed.manifest.storage_dtype == "bfloat16"


def test_shards_left_in_another_dtype_are_refused(
    trained: tuple[Snapshot, TrainingRun], tmp_path: Path
) -> None:
    with pytest.raises(Crash):
        build(trained, tmp_path / "idx", executor=Counting(limit=1), shards=3)
    with pytest.raises(AttributionInputError, match="holds float32 rows"):
        build(trained, tmp_path / "idx", executor=Counting(), shards=3, storage_dtype="float16")
