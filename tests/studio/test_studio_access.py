"""Private datanets in the Studio: access requests, the owner's approve, deny and revoke,
reads and writes with the grant, and the messages of every refusal."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from tests.studio.conftest import TINY_RECIPE, colour_rows, jsonl, wait_for
from tests.studio.test_studio_rewards import ask, attribute


def private_datanet(client: TestClient) -> None:
    for name in ("alice", "bob", "carol"):
        assert client.post("/api/accounts", json={"name": name}).status_code == 200
    body = {"name": "secret", "schema_id": "openledger.instruction/1", "private": True}
    ownerless = client.post("/api/datanets", json=body)
    assert "a private datanet needs an owner" in ownerless.json()["error"]
    made = client.post("/api/datanets", json={**body, "owner": "alice"})
    assert made.json()["visibility"] == "private", made.text


def upload_as(client: TestClient, account: str, rows: list[dict[str, str]]) -> dict:
    params = {"filename": "rows.jsonl", "account": account}
    answer = client.post("/api/datanets/secret/upload", params=params, content=jsonl(rows))
    return dict(answer.json())


def records_as(client: TestClient, reader: str | None) -> dict:
    params = {"reader": reader} if reader else {}
    return dict(client.get("/api/datanets/secret/records", params=params).json())


def decide(client: TestClient, request_id: int, decision: str, owner: str) -> dict:
    body = {"owner": owner, "days": 1}
    return dict(
        client.post(f"/api/datanets/secret/access/{request_id}/{decision}", json=body).json()
    )


def test_access_requests_approve_deny_and_revoke(client: TestClient) -> None:
    private_datanet(client)
    assert upload_as(client, "alice", colour_rows()[:4])["stored"] == 4  # the owner needs no grant
    refused = upload_as(client, "bob", colour_rows()[4:])
    assert "'secret' is private and bob has no approved access request" in refused["error"]
    assert "pick an account with approved access" in records_as(client, None)["error"]
    assert "bob has no approved access request" in records_as(client, "bob")["error"]

    empty = client.post("/api/datanets/secret/access", json={"account": "bob", "purpose": " "})
    assert "purpose must say what the data is for" in empty.json()["error"]
    filed = client.post("/api/datanets/secret/access", json={"account": "bob", "purpose": "eval"})
    assert filed.json() == {
        "id": 1,
        "requester": filed.json()["requester"],
        "name": "bob",
        "purpose": "eval",
        "status": "pending",
    }
    carol = client.post("/api/datanets/secret/access", json={"account": "carol", "purpose": "x"})
    assert carol.json()["id"] == 2

    assert "only the owner" in decide(client, 1, "approve", "bob")["error"]
    assert "unknown decision 'grant'" in decide(client, 1, "grant", "alice")["error"]
    assert "is pending, not approved" in decide(client, 1, "revoke", "alice")["error"]
    approved = decide(client, 1, "approve", "alice")
    assert approved["status"] == "approved"
    assert approved["expires_at"] > 0
    assert decide(client, 2, "deny", "alice")["status"] == "denied"
    assert "is denied, not pending" in decide(client, 2, "approve", "alice")["error"]

    # bob reads and contributes with his grant; carol still cannot.
    assert upload_as(client, "bob", colour_rows()[4:])["stored"] == 4
    assert records_as(client, "bob")["total"] == 8
    assert "carol has no approved access request" in records_as(client, "carol")["error"]
    listed = client.get("/api/datanets/secret/access").json()
    assert listed["visibility"] == "private"
    assert listed["owner_name"] == "alice"
    assert [(r["name"], r["status"]) for r in listed["requests"]] == [
        ("bob", "approved"),
        ("carol", "denied"),
    ]

    # A revoked grant stops working at once.
    assert decide(client, 1, "revoke", "alice")["status"] == "revoked"
    assert "bob has no approved access request" in records_as(client, "bob")["error"]
    assert "no approved access request" in upload_as(client, "bob", colour_rows())["error"]
    missing = decide(client, 9, "approve", "alice")
    assert "9" in missing["error"]


def test_public_datanets_need_no_access_request(client: TestClient) -> None:
    assert client.post("/api/accounts", json={"name": "alice"}).status_code == 200
    body = {"name": "open", "schema_id": "openledger.instruction/1", "owner": "alice"}
    assert client.post("/api/datanets", json=body).json()["visibility"] == "public"
    asked = client.post("/api/datanets/open/access", json={"account": "alice", "purpose": "x"})
    assert "is public; reading it needs no grant" in asked.json()["error"]
    assert client.get("/api/datanets/open/access").json()["requests"] == []


def test_training_on_a_private_snapshot_needs_the_trainers_grant(
    client: TestClient, studio_home: Path
) -> None:
    private_datanet(client)
    assert upload_as(client, "alice", colour_rows())["stored"] == 8
    snapshot = client.post("/api/datanets/secret/snapshot").json()
    base = str((studio_home / "models" / "tiny-llama").resolve())
    body = {"name": "secret-r4", "datanet": "secret", "snapshot_id": 1, "base_model": base}
    body["recipe"] = TINY_RECIPE
    nobody = client.post("/api/train", json=body)
    assert "is private: pick the local account that trains on it" in nobody.json()["error"]
    stranger = client.post("/api/train", json={**body, "registrant": "bob"})
    assert "bob has no approved access request" in stranger.json()["error"]
    filed = client.post("/api/datanets/secret/access", json={"account": "bob", "purpose": "lora"})
    decide(client, filed.json()["id"], "approve", "alice")
    started = client.post("/api/train", json={**body, "registrant": "bob"})
    assert started.status_code == 200, started.text
    job_id = started.json()["id"]

    def state() -> str:
        return str(client.get(f"/api/train/jobs/{job_id}").json()["state"])

    assert wait_for(lambda: state() != "running" and state(), 300, "training") == "done"
    adapter = {a["name"]: a for a in client.get("/api/adapters").json()}["secret-r4"]
    assert adapter["snapshot_root"] == snapshot["root"]
    assert adapter["model"]["registrant"] == filed.json()["requester"]

    # Evaluation and retrieval read it as an account the page names, with its grant.
    evaluation = {"adapter": "secret-r4", "datanet": "secret", "snapshot_id": 1}
    evaluation["num_generate"] = 2
    unnamed = client.post("/api/evaluate", json=evaluation)
    assert (unnamed.status_code, unnamed.json()["kind"]) == (400, "AccessDeniedError")
    assert "is private: pick the local account that reads it (read as)" in unnamed.json()["error"]
    carol = client.post("/api/evaluate", json={**evaluation, "reader": "carol"})
    assert "carol has no approved access request" in carol.json()["error"]
    unknown = client.post("/api/evaluate", json={**evaluation, "reader": "mallory"})
    assert unknown.status_code == 404
    assert "mallory" in unknown.json()["error"]
    started_eval = client.post("/api/evaluate", json={**evaluation, "reader": "bob"})
    assert started_eval.status_code == 200, started_eval.text

    def evaluated() -> dict | None:
        found = client.get(f"/api/evaluate/{started_eval.json()['id']}").json()
        return None if found["state"] == "running" else dict(found)

    done_eval = wait_for(evaluated, 300, "the evaluation")
    assert done_eval["state"] == "done", done_eval
    assert done_eval["trained_on"] is True
    assert done_eval["result"]["num_records"] == 8
    assert done_eval["result"]["num_generated"] == 2
    sourced = {"message": "Code red?", "adapter": "secret-r4", "max_tokens": 2}
    sourced |= {"retrieval": "secret", "k": 2}
    no_reader = client.post("/api/chat", json=sourced)
    assert (no_reader.status_code, no_reader.json()["kind"]) == (400, "AccessDeniedError")
    assert "pick the local account that reads it (sources read as)" in no_reader.json()["error"]
    assert (
        "carol has no approved"
        in client.post("/api/chat", json={**sourced, "reader": "carol"}).json()["error"]
    )
    with client.stream("POST", "/api/chat", json={**sourced, "reader": "bob"}) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")
        ]
    assert [s["number"] for s in events[0]["sources"]] == [1, 2]
    assert "Code red?" in events[0]["sources"][0]["text"]
    assert events[-1]["done"] is True

    # Its answers are attributed with the trainer's grant, until the owner revokes it.
    first = ask(client, "Code red?", adapter="secret-r4")
    credited = attribute(client, first, "Code red?", adapter="secret-r4")
    assert credited.json()["state"] == "done", credited.json()
    assert credited.json()["shares"]
    decide(client, filed.json()["id"], "revoke", "alice")
    second = ask(client, "Code blue?", adapter="secret-r4")
    refused = attribute(client, second, "Code blue?", adapter="secret-r4")
    assert "bob has no approved access request" in refused.json()["error"]
    revoked = client.post("/api/evaluate", json={**evaluation, "reader": "bob"})
    assert "bob has no approved access request" in revoked.json()["error"]
    gone = client.post("/api/chat", json={**sourced, "reader": "bob"})
    assert "bob has no approved access request" in gone.json()["error"]
