"""Converters, JSONL/Parquet/HF exports and imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datanet_rows import rows

from openledger.crypto import Account
from openledger.data import (
    ChatRecord,
    Datanet,
    InstructionRecord,
    from_alpaca,
    from_openai_messages,
    from_prompt_completion,
    from_sharegpt,
    read_jsonl,
)
from openledger.exceptions import SchemaError


def test_converters() -> None:
    alpaca = from_alpaca(
        [
            {"instruction": "Add", "input": "", "output": "2"},
            {"instruction": "Sum", "input": "1,2", "output": "3"},
        ]
    )
    assert alpaca[0].input is None
    assert alpaca[1].input == "1,2"
    assert alpaca[1].response == "3"
    pc = from_prompt_completion([{"prompt": "Hi", "completion": "Hello"}])
    assert pc[0] == InstructionRecord(instruction="Hi", response="Hello")
    share = from_sharegpt(
        [{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    )
    assert [m.role for m in share[0].messages] == ["user", "assistant"]
    oa = from_openai_messages(
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "A"},
                ]
            }
        ]
    )
    assert isinstance(oa[0], ChatRecord)
    assert oa[0].messages[0].content == "Be brief"


@pytest.mark.parametrize(
    ("convert", "row", "message"),
    [
        (from_alpaca, {"instruction": "x"}, r"row 0 has no 'output' field"),
        (
            from_prompt_completion,
            {"prompt": "x", "completion": ""},
            r"record 0 does not fit InstructionRecord: response",
        ),
        (
            from_sharegpt,
            {"conversations": [{"from": "robot", "value": "x"}]},
            r"unknown 'from' role",
        ),
        (
            from_openai_messages,
            {"messages": [{"role": "user", "content": "only a question"}]},
            r"at least one 'assistant'",
        ),
        (from_openai_messages, {"messages": "nope"}, r"messages must be a list"),
    ],
)
def test_converters_name_the_bad_row(convert, row, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SchemaError, match=message):
        convert([row])


def test_jsonl_round_trip_keeps_hashes(
    dn: Datanet, alice: Account, bob: Account, tmp_path: Path
) -> None:
    receipts = dn.contribute(rows(5), contributor=alice)
    out = tmp_path / "out.jsonl"
    assert dn.to_jsonl(out) == 5
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first["_record_hash"] == receipts[0].record_hash
    assert first["_contributor"] == alice.address
    copy = Datanet.create(tmp_path / "copy", name="copy", schema=InstructionRecord)
    imported = copy.import_jsonl(out, contributor=bob, batch_size=2)
    assert [r.record_hash for r in imported] == [r.record_hash for r in receipts]
    assert copy.next_nonce(bob) == 3
    assert copy.contributors() == {bob.address: 5}


def test_jsonl_import_refuses_invalid_utf8_and_keeps_earlier_batches(
    dn: Datanet, alice: Account, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    good = "\n".join(json.dumps(r) for r in rows(3)).encode()
    path.write_bytes(good + b'\n{"instruction": "\xff\xfe", "response": "x"}\n')
    with pytest.raises(SchemaError, match=r"bad.jsonl:4 is not valid UTF-8"):
        list(read_jsonl(path))
    with pytest.raises(SchemaError, match="not valid UTF-8"):
        dn.import_jsonl(path, contributor=alice, batch_size=10)
    assert len(dn) == 0
    path.write_bytes(good + b'\n{"instruction": "only"}\n')
    with pytest.raises(
        SchemaError, match=r"rows 2..3: record 1 does not fit InstructionRecord: response"
    ):
        dn.import_jsonl(path, contributor=alice, batch_size=2)
    assert len(dn) == 2


def test_parquet_and_hf_round_trip(
    dn: Datanet, alice: Account, bob: Account, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow not installed: pip install 'openledger[data]'")
    datasets = pytest.importorskip(
        "datasets", reason="datasets not installed: pip install 'openledger[data]'"
    )
    data = [*rows(3), {"instruction": "With input", "input": "ctx", "response": "ok"}]
    receipts = dn.contribute(data, contributor=alice)
    out = tmp_path / "out.parquet"
    assert dn.to_parquet(out) == 4
    copy = Datanet.create(tmp_path / "pq", name="pq", schema=InstructionRecord)
    assert [r.record_hash for r in copy.import_parquet(out, contributor=bob)] == [
        r.record_hash for r in receipts
    ]
    ds = dn.to_hf_dataset()
    assert isinstance(ds, datasets.Dataset)
    assert len(ds) == 4
    assert ds[3]["input"] == "ctx"
    hf = Datanet.create(tmp_path / "hf", name="hf", schema=InstructionRecord)
    assert [r.record_hash for r in hf.import_hf_dataset(ds, contributor=bob)] == [
        r.record_hash for r in receipts
    ]
