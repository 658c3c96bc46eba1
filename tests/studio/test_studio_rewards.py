"""The Rewards tab on the Studio's receipt ledger: answers metered in chat persist across a
restart, an epoch pays the attributed ones once, claims come with their proofs, and the
epoch reports the data bonds slashed in its window."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.studio.conftest import TINY_RECIPE, colour_rows, jsonl, wait_for
from tests.studio.test_studio_api import make_datanet, upload

from openledger.chain import FlagKind
from openledger.gateway import ReceiptLedger, settle_ledger
from openledger.studio import StudioConfig, create_app


def train_adapter(client: TestClient, studio_home: Path, name: str = "colours-r4") -> None:
    """A datanet of alice's colour rows, its snapshot, and a finished tiny adapter."""
    make_datanet(client)
    assert upload(client, jsonl(colour_rows())).status_code == 200
    assert client.post("/api/datanets/colours/snapshot").status_code == 200
    base = str((studio_home / "models" / "tiny-llama").resolve())
    body = {"name": name, "datanet": "colours", "snapshot_id": 1, "base_model": base}
    started = client.post("/api/train", json={**body, "recipe": TINY_RECIPE, "registrant": "alice"})
    assert started.status_code == 200, started.text
    job_id = started.json()["id"]

    def state() -> str:
        return str(client.get(f"/api/train/jobs/{job_id}").json()["state"])

    assert wait_for(lambda: state() in ("done", "failed", "cancelled") and state(), 300, "training")
    assert state() == "done"
    # The adapter is registered on the chain under the id its manifest and registrant give.
    from openledger.chain import model_id
    from openledger.train import Adapter

    model = client.get(f"/api/train/jobs/{job_id}").json()["model"]
    adapter = Adapter.open(studio_home / "adapters" / name)
    alice = client.app.state.studio.workspace.account("alice")  # type: ignore[attr-defined]
    assert model["registrant"] == alice.address
    assert model["model_id"] == model_id(adapter.model_manifest(), alice.address)
    protocol = client.app.state.studio.rewards.protocol()  # type: ignore[attr-defined]
    info = protocol.models.get_model(model["model_id"])
    assert info.owner == alice.address
    assert info.manifest == adapter.model_manifest()
    listed = {a["name"]: a for a in client.get("/api/adapters").json()}
    assert listed[name]["model"] == model


def ask(
    client: TestClient,
    question: str,
    adapter: str | None = "colours-r4",
    mix: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One chat answer (of an adapter, or a weighted mix); returns its ``done`` event."""
    body = {"message": question, "adapter": adapter, "mix": mix, "max_tokens": 6}
    with client.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")
        ]
    assert not [e for e in events if "error" in e]
    done: dict[str, Any] = events[-1]
    assert done["done"]
    assert done["request_id"].startswith("0x")
    return done


def attribute(
    client: TestClient, done: dict[str, Any], question: str, adapter: str = "colours-r4"
) -> Any:
    """Attribute an adapter's answer and wait for the job; returns the last response."""
    body = {
        "request_id": done["request_id"],
        "adapter": adapter,
        "prompt": question,
        "completion": done["text"],
    }
    started = client.post("/api/attribute", json=body)
    if started.status_code != 200:
        return started

    def job() -> Any:
        found = client.get(f"/api/attribute/{started.json()['id']}")
        return found if found.json()["state"] != "running" else None

    return wait_for(job, 300, "the attribution")


def reopen(home: Path) -> TestClient:
    return TestClient(create_app(StudioConfig(home=home)), raise_server_exceptions=False)


def bond_and_slash(client: TestClient, studio_home: Path) -> str:
    """On the Studio's chain: the datanet's snapshot published, alice bonded and flagged."""
    from openledger.data import Datanet

    rewards = client.app.state.studio.rewards  # type: ignore[attr-defined]
    protocol, chain = rewards.protocol(), rewards.chain()
    alice = client.app.state.studio.workspace.account("alice")  # type: ignore[attr-defined]
    datanet = Datanet.open(studio_home / "datanets" / "colours")
    try:
        snapshot = datanet.snapshot_at(1)
        receipt = protocol.datanets.register_datanet("colours")
        datanet_id = receipt.event("DatanetRegistered")["datanetId"]
        protocol.datanets.publish_snapshot(datanet_id, snapshot.root, snapshot.count)
    finally:
        datanet.close()
    bonds = protocol.require_bonds()
    bonds.set_policy(datanet_id, 10**19, 1_000, 86_400)
    chain.fund(alice.address, 10**17)
    protocol.token.transfer(alice.address, 10**19)
    bonds.approve_and_bond(datanet_id, 10**19, sender=alice)
    bonds.flag(datanet_id, "0x" + "44" * 32, alice.address, FlagKind.DUPLICATE, "0x" + "55" * 32)
    return str(alice.address)


def test_receipts_persist_pay_once_and_report_slashed_bonds(studio_home: Path) -> None:
    with reopen(studio_home) as client:
        train_adapter(client, studio_home)
        first = ask(client, "Code red?")
        second = ask(client, "Code blue?")
        wrong = attribute(client, {**first, "text": first["text"] + "!"}, "Code red?")
        assert "is not the one metered" in wrong.json()["error"]
        credited = attribute(client, first, "Code red?")
        assert credited.status_code == 200, credited.text
        assert credited.json()["pending"] == 1
        again = attribute(client, first, "Code red?")
        assert "attributed to 'colours-r4' already" in again.json()["error"]
    ledger_file = studio_home / "rewards" / "ledger.sqlite"
    assert ledger_file.stat().st_mode & 0o777 == 0o600

    # A restart: the metered answers and the attribution are read back from the ledger.
    with reopen(studio_home) as client:
        overview = client.get("/api/rewards").json()
        assert (overview["answers"], overview["unsettled"], overview["attributed"]) == (2, 2, 1)
        alice = bond_and_slash(client, studio_home)
        settled = client.post("/api/rewards/settle", json={"pool": "100"})
        assert settled.status_code == 200, settled.text
        epoch = settled.json()
        assert epoch["epoch_id"] == 1
        assert (epoch["settled"], epoch["nothing_owed"]) == (1, 1)
        assert epoch["total"] == str(100 * 10**18)
        assert epoch["bond_penalties"] == [
            {"address": alice, "name": "alice", "amount": str(10**18)}
        ]
        # Never twice: the Studio refuses, and the ledger itself finds nothing to pay.
        twice = client.post("/api/rewards/settle", json={"pool": "100"})
        assert "no attributed answers wait" in twice.json()["error"]
        rewards = client.app.state.studio.rewards  # type: ignore[attr-defined]
        protocol = rewards.protocol()
        nothing = settle_ledger(
            rewards.ledger,
            protocol,
            operator=rewards.operator,
            pool_wei=10**18,
            through_window=2**40,
            require_published_snapshots=False,
        )
        assert (nothing.epoch_id, nothing.total, nothing.settled) == (None, 0, [])
        assert protocol.rewards.posted_epoch_ids() == [1]
        late = attribute(client, second, "Code blue?")
        assert "was settled already" in late.json()["error"]

        rows = client.get("/api/rewards").json()["epochs"]
        assert [(r["epoch_id"], r["live"]) for r in rows] == [(1, True)]
        assert rows[0]["bond_penalties"][0]["amount"] == str(10**18)
        payees = {p["address"]: p for p in rows[0]["payees"]}
        assert sum(int(p["amount"]) for p in payees.values()) == 100 * 10**18
        before = protocol.token.balance_of(alice)
        claimed = client.post("/api/rewards/claim", json={"epoch_id": 1, "address": alice})
        assert claimed.status_code == 200, claimed.text
        assert int(claimed.json()["balance"]) == before + int(payees[alice]["amount"])
        balances = {b["name"]: b for b in client.get("/api/rewards").json()["balances"]}
        assert balances["alice"]["balance"] == claimed.json()["balance"]
        repeat = client.post("/api/rewards/claim", json={"epoch_id": 1, "address": alice})
        assert "claimed epoch 1 already" in repeat.json()["error"]

    # The embedded chain ended with the process: the epoch is listed, not claimable.
    with reopen(studio_home) as client:
        rows = client.get("/api/rewards").json()["epochs"]
        assert [(r["epoch_id"], r["live"]) for r in rows] == [(1, False)]
        gone = client.post("/api/rewards/claim", json={"epoch_id": 1, "address": alice})
        assert "no longer reaches" in gone.json()["error"]
    with ReceiptLedger(ledger_file) as ledger:
        assert ledger.count_pending() == (0, 0)


@pytest.mark.parametrize("pool", ["0", "-1", "ten", "1e-19"])
def test_bad_pools_are_refused_before_anything_is_settled(client: TestClient, pool: str) -> None:
    refused = client.post("/api/rewards/settle", json={"pool": pool})
    assert refused.status_code == 400
    assert "the pool must be" in refused.json()["error"]
