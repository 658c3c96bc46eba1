"""The Chat tab's weighted mix of adapters (the engine's answer, the receipt's weights) and
its attribution in the background: one job per adapter part, and a cancel that writes
nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tests.studio.conftest import TINY_RECIPE, wait_for
from tests.studio.test_studio_rewards import ask, reopen, train_adapter

from openledger.attribution import SHARE_UNITS

MIX = {"colours-r4": 0.75, "colours-b": 0.25}


def train_second(client: TestClient, studio_home: Path) -> None:
    base = str((studio_home / "models" / "tiny-llama").resolve())
    body = {"name": "colours-b", "datanet": "colours", "snapshot_id": 1, "base_model": base}
    recipe = {**TINY_RECIPE, "seed": 7, "learning_rate": 2e-2}
    job_id = client.post("/api/train", json={**body, "recipe": recipe}).json()["id"]

    def state() -> str:
        return str(client.get(f"/api/train/jobs/{job_id}").json()["state"])

    assert wait_for(lambda: state() != "running" and state(), 300, "training") == "done"


def ask_mix(client: TestClient, question: str, mix: dict[str, float]) -> dict[str, Any]:
    return ask(client, question, adapter=None, mix=mix)


def start(client: TestClient, done: dict[str, Any], adapter: str, question: str) -> Any:
    body = {
        "request_id": done["request_id"],
        "adapter": adapter,
        "prompt": question,
        "completion": done["text"],
    }
    return client.post("/api/attribute", json=body)


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    def job() -> dict[str, Any]:
        return dict(client.get(f"/api/attribute/{job_id}").json())

    return wait_for(lambda: job()["state"] != "running" and job(), 300, "the attribution")


def test_a_weighted_mix_answers_as_the_engine_and_credits_each_part(studio_home: Path) -> None:
    from openledger.serve import Engine, SamplingParams

    with reopen(studio_home) as client:
        train_adapter(client, studio_home)
        train_second(client, studio_home)
        both = client.post("/api/chat", json={"message": "hi", "adapter": "colours-r4", "mix": MIX})
        assert "one adapter or a weighted mix, not both" in both.json()["error"]
        zero = client.post("/api/chat", json={"message": "hi", "mix": {"colours-r4": 0}})
        assert "the weight of 'colours-r4' in the mix must be > 0" in zero.json()["error"]
        unknown = client.post("/api/chat", json={"message": "hi", "mix": {"nope": 1.0}})
        assert unknown.json()["error"] == "no adapter called 'nope'"

        done = ask_mix(client, "Code red?", MIX)
        rewards = client.app.state.studio.rewards  # type: ignore[attr-defined]
        receipt = rewards.ledger.receipt(done["request_id"]).receipt
        assert receipt.adapter_names == ("colours-b", "colours-r4")
        assert receipt.adapter_weights == (SHARE_UNITS // 4, SHARE_UNITS * 3 // 4)

        # Each part is attributed by its own background job, then paid in one epoch.
        jobs = [start(client, done, name, "Code red?").json()["id"] for name in MIX]
        assert [finished(client, j)["state"] for j in jobs] == ["done", "done"]
        rows = rewards.ledger.read(
            "SELECT COUNT(*) FROM attributions WHERE request_id = ?", (done["request_id"],)
        )
        assert rows == [(2,)]
        epoch = client.post("/api/rewards/settle", json={"pool": "10"}).json()
        assert (epoch["epoch_id"], epoch["settled"]) == (1, 1)

    # The same mix through the engine alone gives the same greedy answer.
    engine = Engine(str((studio_home / "models" / "tiny-llama").resolve()))
    for name in MIX:
        engine.add_adapter(name, studio_home / "adapters" / name)
    messages = [{"role": "user", "content": "Code red?"}]
    expected = engine.generate([messages], [SamplingParams(max_tokens=6, adapter=MIX)])
    assert done["text"] == expected[0].text


def test_a_cancelled_attribution_writes_nothing(studio_home: Path) -> None:
    with reopen(studio_home) as client:
        train_adapter(client, studio_home)
        done = ask(client, "Code red?")
        job = start(client, done, "colours-r4", "Code red?").json()
        assert job["state"] == "running"
        again = start(client, done, "colours-r4", "Code red?")
        assert "is being attributed to 'colours-r4'" in again.json()["error"]
        cancelled = client.post(f"/api/attribute/{job['id']}/cancel").json()
        assert cancelled["id"] == job["id"]
        final = finished(client, job["id"])
        assert final["state"] == "cancelled"
        assert final["shares"] == []
        rewards = client.app.state.studio.rewards  # type: ignore[attr-defined]
        assert rewards.ledger.read("SELECT COUNT(*) FROM attributions") == [(0,)]
        assert client.get("/api/rewards").json()["attributed"] == 0
        refused = client.post("/api/rewards/settle", json={"pool": "10"})
        assert "no attributed answers wait" in refused.json()["error"]
        # Nothing was left behind that blocks a new attribution of the same answer.
        retried = finished(client, start(client, done, "colours-r4", "Code red?").json()["id"])
        assert retried["state"] == "done"
        assert retried["pending"] == 1
        assert abs(sum(s["share"] for s in retried["shares"]) - 1.0) < 1e-9
        missing = client.get("/api/attribute/nope")
        assert missing.status_code == 404
