"""Training data from snapshots, datanets, exports and records; the deterministic split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from openledger.crypto import Account
from openledger.data import Datanet, InstructionRecord, Snapshot, TextRecord, record_hash
from openledger.exceptions import AccessDeniedError, TrainDataError
from openledger.train import load_training_data
from openledger.train.sources import split_indices

Records = Callable[[int], list[InstructionRecord]]


def test_a_snapshot_brings_hashes_contributors_and_root(
    colour_snapshot: Snapshot, colour_records: Records
) -> None:
    data = load_training_data(colour_snapshot)
    assert [s.record_hash for s in data.records] == colour_snapshot.record_hashes()
    assert [s.record for s in data.records] == colour_records(8)
    assert {s.contributor for s in data.records} == set(colour_snapshot.contributors)
    assert (data.datanet_id, data.snapshot_id, data.snapshot_root) == (
        colour_snapshot.datanet_id,
        colour_snapshot.id,
        colour_snapshot.root,
    )


def test_a_datanet_means_its_latest_snapshot(tmp_path: Path, colour_records: Records) -> None:
    datanet = Datanet.create(tmp_path / "dn", name="d", schema=InstructionRecord)
    with pytest.raises(TrainDataError, match="no snapshot"):
        load_training_data(datanet)
    datanet.contribute(colour_records(2), contributor=Account.create())
    snapshot = datanet.snapshot()
    assert load_training_data(datanet).snapshot_root == snapshot.root
    datanet.close()


def test_a_jsonl_export_is_read_and_its_hashes_checked(
    tmp_path: Path, colour_records: Records
) -> None:
    path = tmp_path / "export.jsonl"
    rows = [
        {**r.model_dump(exclude_none=True), "_record_hash": record_hash(r), "_contributor": None}
        for r in colour_records(3)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = load_training_data(path)
    assert [s.record_hash for s in data.records] == [record_hash(r) for r in colour_records(3)]
    rows[1]["response"] = "tampered"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(TrainDataError, match="row 1: _record_hash"):
        load_training_data(path)


def test_records_and_rows_of_every_builtin_schema() -> None:
    rows = [
        {"instruction": "a", "response": "b"},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"text": "t", "label": "l"},
        {"text": "plain"},
    ]
    data = load_training_data([*rows, TextRecord(text="z")])
    kinds = [s.record.schema_id for s in data.records]
    assert kinds == [
        "openledger.instruction/1",
        "openledger.chat/1",
        "openledger.classification/1",
        "openledger.text/1",
        "openledger.text/1",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "empty"),
        ([{"question": "q"}], "match no built-in schema"),
        ([42], "expected a StoredRecord"),
        (3.5, "cannot train on a float"),
    ],
)
def test_bad_inputs_are_named(data: object, message: str) -> None:
    with pytest.raises(TrainDataError, match=message):
        load_training_data(data)


def test_a_private_datanet_needs_a_grant(tmp_path: Path, colour_records: Records) -> None:
    owner, reader = Account.create(), Account.create()
    datanet = Datanet.create(
        tmp_path / "p", name="p", schema=InstructionRecord, visibility="private", owner=owner
    )
    datanet.contribute(colour_records(2), contributor=owner)
    snapshot = datanet.snapshot()
    with pytest.raises(AccessDeniedError, match="private"):
        load_training_data(snapshot)
    request = datanet.request_access(reader, "fine-tuning")
    grant = datanet.approve(request.id, owner=owner)
    assert len(load_training_data(snapshot, grant=grant).records) == 2
    datanet.close()


def test_the_split_is_deterministic_and_order_free(colour_records: Records) -> None:
    data = load_training_data(colour_records(8))
    train, held = split_indices(data, 0.25, seed=3)
    assert len(held) == 2
    assert sorted(train + held) == list(range(8))
    assert split_indices(data, 0.25, seed=3) == (train, held)
    flipped = load_training_data(colour_records(8)[::-1])
    _, held_flipped = split_indices(flipped, 0.25, seed=3)
    held_hashes = {data.records[i].record_hash for i in held}
    assert {flipped.records[i].record_hash for i in held_flipped} == held_hashes
    assert split_indices(data, 0.0, seed=3) == (list(range(8)), [])
    with pytest.raises(TrainDataError, match="two records"):
        split_indices(load_training_data(colour_records(1)), 0.5, seed=0)
