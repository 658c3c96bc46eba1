"""``openledger datanet contribute`` with a CSV file: the rows the Studio's upload reads
from the same bytes, one contribution (a bad row stores nothing), clear refusals; and the
Parquet and JSONL files it read before through the same reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openledger.cli import main
from openledger.data import Datanet, read_contribution_file

CSV = (
    b"\xef\xbb\xbfinstruction,input,response\n"
    b'Code red?,,RED ok.\n"Code, blue?","two\nlines",BLUE ok.\nCode gold?,ctx,GOLD ok.\n'
)


def contribute(tmp_path: Path, name: str) -> int:
    return main(["datanet", "contribute", str(tmp_path / "dn"), str(tmp_path / name),
                 "--key", str(tmp_path / "alice.key")])  # fmt: skip


def fields(tmp_path: Path) -> list[dict[str, str]]:
    with Datanet.open(tmp_path / "dn") as datanet:
        return [s.record.model_dump(mode="json", exclude_none=True) for s in datanet.records()]


@pytest.fixture
def datanet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["account", "new", str(tmp_path / "alice.key")]) == 0
    assert main(["datanet", "create", str(tmp_path / "dn"), "--name", "dn",
                 "--owner-key", str(tmp_path / "alice.key")]) == 0  # fmt: skip
    capsys.readouterr()
    return tmp_path


def test_a_csv_file_is_one_contribution_of_the_rows_the_studio_reads(
    datanet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from openledger.studio.uploads import rows_of

    (datanet / "rows.csv").write_bytes(CSV)
    assert contribute(datanet, "rows.csv") == 0
    assert json.loads(capsys.readouterr().out)["records"] == 3
    expected = [
        {"instruction": "Code red?", "response": "RED ok."},
        {"instruction": "Code, blue?", "input": "two\nlines", "response": "BLUE ok."},
        {"instruction": "Code gold?", "input": "ctx", "response": "GOLD ok."},
    ]
    assert fields(datanet) == expected
    # The Studio's upload and the command read the same bytes into the same rows.
    assert rows_of("upload.csv", CSV) == read_contribution_file(datanet / "rows.csv") == expected


@pytest.mark.parametrize(
    ("name", "body", "named"),
    [
        (
            "bad.csv",
            b"instruction,response\nCode red?,RED ok.\nCode blue?,BLUE,extra\n",
            "bad.csv:3",
        ),
        ("bad.csv", b"instruction,response\nCode red?,RED ok.\nCode blue?\n", "response"),
        ("bad.csv", b"instruction,response\n", "holds no rows"),
        ("bad.csv", b"\xff\xfeinstruction\n", "not valid UTF-8"),
        ("rows.txt", b"instruction,response\n", ".jsonl, .csv, .parquet file, not .txt"),
    ],
)
def test_a_bad_csv_names_the_problem_and_stores_nothing(
    datanet: Path, capsys: pytest.CaptureFixture[str], name: str, body: bytes, named: str
) -> None:
    (datanet / name).write_bytes(body)
    assert contribute(datanet, name) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert named in error
    assert fields(datanet) == []


def test_parquet_and_jsonl_go_through_the_same_reader(
    datanet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    rows = [{"instruction": "Code teal?", "input": None, "response": "TEAL ok."}]
    pq.write_table(pa.Table.from_pylist(rows), datanet / "rows.parquet")
    assert contribute(datanet, "rows.parquet") == 0
    export = [{"instruction": "Code pink?", "response": "PINK ok.", "_contributor": "0x00"}]
    (datanet / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in export))
    assert contribute(datanet, "rows.jsonl") == 0
    assert fields(datanet) == [
        {"instruction": "Code teal?", "response": "TEAL ok."},
        {"instruction": "Code pink?", "response": "PINK ok."},
    ]
    broken = datanet / "broken.parquet"
    broken.write_bytes(b"not parquet")
    assert contribute(datanet, "broken.parquet") == 2
    assert "is not a readable Parquet file" in capsys.readouterr().err
