"""The Studio's API without a browser: bad uploads store nothing, cancels keep nothing,
errors are messages, the bind address is checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.studio.conftest import TINY_RECIPE, colour_rows, jsonl, wait_for

from openledger.exceptions import ConfigError
from openledger.studio import StudioConfig, is_loopback


def make_datanet(client: TestClient, name: str = "colours") -> None:
    assert client.post("/api/accounts", json={"name": "alice"}).status_code == 200
    made = client.post(
        "/api/datanets", json={"name": name, "schema_id": "openledger.instruction/1"}
    )
    assert made.status_code == 200, made.text


def upload(client: TestClient, body: bytes, filename: str = "rows.jsonl", name: str = "colours"):
    return client.post(
        f"/api/datanets/{name}/upload",
        params={"filename": filename, "account": "alice"},
        content=body,
    )


def stored(client: TestClient, name: str = "colours") -> int:
    return int(client.get(f"/api/datanets/{name}/records").json()["total"])


def test_upload_then_snapshot_shows_root_and_contributor(client: TestClient) -> None:
    make_datanet(client)
    done = upload(client, jsonl(colour_rows()))
    assert done.status_code == 200, done.text
    assert done.json()["stored"] == 8
    records = client.get("/api/datanets/colours/records").json()["records"]
    assert {r["contributor_name"] for r in records} == {"alice"}
    assert {r["status"] for r in records} == {"accepted"}
    snap = client.post("/api/datanets/colours/snapshot").json()
    assert snap["count"] == 8
    assert snap["root"].startswith("0x")
    assert len(snap["root"]) == 66
    listed = client.get("/api/datanets").json()
    assert listed[0]["snapshots"][0]["root"] == snap["root"]


def test_csv_upload_stores_rows(client: TestClient) -> None:
    make_datanet(client)
    body = b"instruction,input,response\nCode red?,,RED ok.\nCode blue?,ctx,BLUE ok.\n"
    done = upload(client, body, "rows.csv")
    assert done.status_code == 200, done.text
    fields = [r["fields"] for r in client.get("/api/datanets/colours/records").json()["records"]]
    assert fields[0] == {"instruction": "Code red?", "response": "RED ok."}
    assert fields[1]["input"] == "ctx"


def test_parquet_upload_stores_rows(client: TestClient, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    make_datanet(client)
    pq.write_table(pa.Table.from_pylist(colour_rows()[:3]), tmp_path / "rows.parquet")
    done = upload(client, (tmp_path / "rows.parquet").read_bytes(), "rows.parquet")
    assert done.status_code == 200, done.text
    records = client.get("/api/datanets/colours/records").json()["records"]
    assert [r["fields"] for r in records] == colour_rows()[:3]


@pytest.mark.parametrize(
    ("body", "filename", "named"),
    [
        # one good row, then one of another schema: the whole file is refused
        (jsonl([*colour_rows()[:1], {"text": "plain text"}]), "rows.jsonl", "text"),
        (jsonl([{"instruction": "Code red?"}]), "rows.jsonl", "response"),
        (
            b'{"instruction": "Code red?", "response": "RED ok."}\n{not json\n',
            "bad.jsonl",
            "bad.jsonl:2",
        ),
        (b"instruction,response\nCode red?,RED ok.,extra\n", "rows.csv", "more cells"),
        (jsonl(colour_rows()), "rows.parquet", "rows.parquet is not a readable Parquet file"),
        (jsonl(colour_rows()), "rows.txt", "not .txt"),
        (b"\xff\xfe", "rows.csv", "UTF-8"),
    ],
)
def test_bad_upload_names_the_problem_and_stores_nothing(
    client: TestClient, body: bytes, filename: str, named: str
) -> None:
    make_datanet(client)
    refused = upload(client, body, filename)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert named in error
    assert "Traceback" not in refused.text
    assert stored(client) == 0


def test_oversized_upload_is_refused_and_stores_nothing(client: TestClient) -> None:
    make_datanet(client)
    rows = [{"instruction": f"Question {i}?", "response": "An answer."} for i in range(200)]
    refused = upload(client, jsonl(rows))
    assert refused.status_code == 400
    assert "larger than the 4,096 bytes" in refused.json()["error"]
    assert stored(client) == 0


def test_unknown_things_are_messages(client: TestClient) -> None:
    missing = client.get("/api/datanets/nope/records")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no datanet called 'nope'"
    bad_name = client.post("/api/datanets", json={"name": "../up", "schema_id": "x"})
    assert bad_name.status_code == 400
    assert "datanet name '../up'" in bad_name.json()["error"]
    unsigned = client.post(
        "/api/datanets/colours/upload", params={"filename": "a.jsonl", "account": "bob"}
    )
    assert "no local account called 'bob'" in unsigned.json()["error"]
    assert client.post("/api/rewards/settle", json={"pool": "-1"}).status_code == 400
    no_answers = client.post("/api/rewards/settle", json={"pool": "10"})
    assert "attribute an answer in the Chat tab" in no_answers.json()["error"]


def test_an_unexpected_failure_is_a_message_without_a_traceback(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[str]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(client.app.state.studio.workspace, "datanet_names", broken)  # type: ignore[attr-defined]
    failed = client.get("/api/datanets")
    assert failed.status_code == 500
    assert "unexpected RuntimeError" in failed.json()["error"]
    assert "disk on fire" not in failed.text
    assert "Traceback" not in failed.text


def test_cancelled_training_leaves_no_adapter_and_no_folder(
    client: TestClient, studio_home: Path
) -> None:
    make_datanet(client)
    upload(client, jsonl(colour_rows()))
    client.post("/api/datanets/colours/snapshot")
    base = str((studio_home / "models" / "tiny-llama").resolve())
    body = {
        "name": "never",
        "datanet": "colours",
        "snapshot_id": 1,
        "base_model": base,
        "recipe": {**TINY_RECIPE, "max_steps": 100_000},
    }
    started = client.post("/api/train", json=body)
    assert started.status_code == 200, started.text
    job_id = started.json()["id"]

    def job() -> dict[str, Any]:
        return client.get(f"/api/train/jobs/{job_id}").json()

    rewards = client.app.state.studio.rewards  # type: ignore[attr-defined]
    chain = rewards.chain()
    rewards.protocol()  # NOTE: deployed now, so a registration would add a block
    block = chain.block_number()
    wait_for(lambda: job()["step"] >= 1, 120, "the first training step")
    second = client.post("/api/train", json={**body, "name": "other"})
    assert "a training run is going" in second.json()["error"]
    client.post(f"/api/train/jobs/{job_id}/cancel")
    final = wait_for(
        lambda: job()["state"] in ("cancelled", "done", "failed") and job(), 120, "cancel"
    )
    assert final["state"] == "cancelled"
    assert client.get("/api/adapters").json() == []
    adapters = studio_home / "adapters"
    assert not (adapters / "never").exists()
    assert [p.name for p in adapters.rglob("*")] in ([], [".staging"])
    # Nothing registered: no transaction at all reached the chain, and nothing was noted.
    assert final["model"] is None
    assert chain.block_number() == block
    assert rewards.models() == {}


def test_only_loopback_hosts_unless_allowed(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("example.org")
    with pytest.raises(ConfigError, match="--allow-remote"):
        StudioConfig(home=tmp_path, host="0.0.0.0")
    assert StudioConfig(home=tmp_path, host="0.0.0.0", allow_remote=True).host == "0.0.0.0"


@pytest.mark.parametrize(
    "argv", [["--share"], ["--host", "0.0.0.0"], ["--host", "192.168.1.4", "--share"]]
)
def test_the_command_refuses_remote_listening_without_allow_remote(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from openledger.cli import main

    assert main(["studio", "--home", str(tmp_path), *argv]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_public_names_are_pinned() -> None:
    import openledger.studio as studio

    expected = [
        "DEFAULT_MAX_UPLOAD_BYTES",
        "StudioConfig",
        "create_app",
        "is_loopback",
        "run_studio",
    ]
    assert sorted(studio.__all__) == expected


def test_an_empty_datanet_cannot_be_snapshot_and_says_so(client: TestClient) -> None:
    make_datanet(client)
    refused = client.post("/api/datanets/colours/snapshot")
    assert refused.status_code == 404
    assert refused.json()["error"] == "datanet 'colours' has no accepted records to snapshot"


def test_evaluation_runs_in_the_background_and_names_bad_choices(client: TestClient) -> None:
    assert (
        client.post(
            "/api/evaluate", json={"adapter": "nope", "datanet": "x", "snapshot_id": 1}
        ).status_code
        == 404
    )
    response = client.get("/api/evaluate/unknown")
    assert response.status_code == 404
    assert "no evaluation" in response.json()["error"]


def test_retrieval_needs_a_datanet_with_a_snapshot(client: TestClient, studio_home: Path) -> None:
    base = str((studio_home / "models" / "tiny-llama").resolve())
    ask = {"message": "Code red?", "base_model": base, "max_tokens": 2}
    missing = client.post("/api/chat", json={**ask, "retrieval": "nope"})
    assert missing.status_code == 404
    assert "no datanet called 'nope'" in missing.json()["error"]
    make_datanet(client)
    empty = client.post("/api/chat", json={**ask, "retrieval": "colours"})
    assert "has no snapshot to retrieve from" in empty.json()["error"]
    upload(client, jsonl(colour_rows()))
    client.post("/api/datanets/colours/snapshot")
    response = client.post("/api/chat", json={**ask, "retrieval": "colours", "k": 2})
    events = [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")
    ]
    assert [s["number"] for s in events[0]["sources"]] == [1, 2]
    assert "Code red?" in events[0]["sources"][0]["text"]
    assert events[-1]["done"] is True
    assert all(1 <= n <= 2 for n in events[-1]["cited"])


def test_reviews_are_signed_by_the_owner_or_a_validator(client: TestClient) -> None:
    for name in ("olivia", "vera"):
        client.post("/api/accounts", json={"name": name})
    made = client.post(
        "/api/datanets",
        json={"name": "reviewed", "schema_id": "openledger.instruction/1", "owner": "olivia"},
    )
    assert made.status_code == 200, made.text
    stored = client.post(
        "/api/datanets/reviewed/upload",
        params={"filename": "rows.jsonl", "account": "olivia"},
        content=jsonl(colour_rows()[:3]),
    )
    assert stored.status_code == 200, stored.text
    records = client.get("/api/datanets/reviewed/records").json()["records"]
    first = records[0]["record_hash"]
    body = {"record_hash": first, "accept": False, "reason": "wrong colour"}
    refused = client.post("/api/datanets/reviewed/review", json={**body, "account": "vera"})
    assert refused.status_code == 400
    assert "vera" in refused.json()["error"] or "validator" in refused.json()["error"]
    allowed = client.post(
        "/api/datanets/reviewed/validators", json={"validator": "vera", "owner": "olivia"}
    )
    assert len(allowed.json()["validators"]) >= 1
    done = client.post("/api/datanets/reviewed/review", json={**body, "account": "vera"})
    assert done.json()["status"] == "rejected"
    snapshot = client.post("/api/datanets/reviewed/snapshot").json()
    assert snapshot["count"] == 2
    not_owner = client.post(
        "/api/datanets/reviewed/validators", json={"validator": "olivia", "owner": "vera"}
    )
    assert not_owner.status_code == 400
