"""The datanet service over HTTP: a real uvicorn server on 127.0.0.1, real PostgreSQL.

One service per module hosts a public datanet in PostgreSQL (with a length rule) and a
private one in a SQLite folder (grants bound to their grantee's key). Every refusal must
come back as a 4xx naming its reason and store nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.data.concurrent_writers import check_exactly_once, run_writers
from tests.data.datanet_servers import DatanetServer, start_datanet_server
from tests.data.postgres_server import PostgresServer, postgres  # noqa: F401

from openledger.crypto import Account
from openledger.data import (
    Datanet,
    InstructionRecord,
    LengthRule,
    RemoteDatanet,
    sign_contribution,
)
from openledger.data.remote_signing import sign_call
from openledger.data.wire import CALL_HEADER
from openledger.exceptions import (
    AccessDeniedError,
    DataNotFoundError,
    DuplicateRecordError,
    NonceError,
    QualityError,
    SchemaError,
    SignatureError,
)

OWNER = Account.from_key("0x" + "0e" * 32)
ALICE = Account.from_key("0x" + "a1" * 32)
BOB = Account.from_key("0x" + "b2" * 32)
CAROL = Account.from_key("0x" + "c3" * 32)


def rows(n: int, tag: str = "") -> list[dict[str, str]]:
    return [
        {"instruction": f"{tag} question {i} on {i * 7919 % 10007}",
         "response": f"{tag} answer {i}: {i * 104729 % 99991}"}
        for i in range(n)
    ]  # fmt: skip


@dataclass
class Hosted:
    server: DatanetServer
    public_store: str
    private_store: str
    crowd_store: str

    def remote(self, name: str) -> RemoteDatanet:
        return RemoteDatanet(self.server.url(name))


@pytest.fixture(scope="module")
def hosted(
    postgres: PostgresServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Hosted]:
    public, crowd = postgres.fresh_url("service"), postgres.fresh_url("crowd")
    private = str(tmp_path_factory.mktemp("service") / "clinic")
    Datanet.create(public, name="medqa", schema=InstructionRecord, owner=OWNER).close()
    Datanet.create(crowd, name="crowd", schema=InstructionRecord).close()
    Datanet.create(
        private, name="clinic", schema=InstructionRecord, owner=OWNER,
        visibility="private", grants="bound",
    ).close()  # fmt: skip
    server = start_datanet_server([public, private, crowd], {public: [LengthRule(min_chars=12)]})
    yield Hosted(server, public, private, crowd)
    assert server.stop() == 0


def state(store: str) -> tuple[int, int]:
    """Records and contributions in the store, read beside the service."""
    with Datanet.open(store) as dn:
        count = dn._store.conn.execute("SELECT COUNT(*) FROM contributions").fetchone()[0]
        return len(dn), int(count)


def post(url: str, body: Any) -> httpx.Response:
    return httpx.post(url + "/contributions", json=body, timeout=30)


def test_every_refusal_is_a_4xx_naming_its_reason_and_stores_nothing(hosted: Hosted) -> None:
    dn = hosted.remote("medqa")
    url = hosted.server.url("medqa")
    dn.contribute(rows(3, "base"), contributor=ALICE)
    before = state(hosted.public_store)
    good = rows(2, "new")
    hashes = [bytes.fromhex(dn.record_hash(r)[2:]) for r in good]
    old = sign_contribution(hashes, datanet_id=dn.id, contributor=ALICE, nonce=0)
    ahead = sign_contribution(hashes, datanet_id=dn.id, contributor=ALICE, nonce=5)
    foreign = sign_contribution(hashes, datanet_id="0x" + "00" * 32, contributor=ALICE, nonce=1)
    fresh = dn.sign(good, contributor=ALICE)
    flipped = fresh.signature[:-4] + ("00" if fresh.signature[-4:-2] != "00" else "11")
    flipped += fresh.signature[-2:]

    def body(records: list[Any] = good, signed: Any = fresh, **changes: Any) -> Any:
        signed = signed.model_copy(update=changes)
        return {"records": records, "signed": json.loads(signed.model_dump_json())}

    cases = {
        "schema_error": (400, body([{"instruction": "no response here"}])),
        "quality_rule": (400, body([{"instruction": "short", "response": "x"}])),
        "duplicate_record": (409, body(rows(2, "base"))),
        "expired": (400, body(deadline=int(time.time()) - 5)),
        "bad_signature": (400, body(signature=flipped)),
        "replayed": (409, body(signed=old)),
        "nonce_skipped": (409, body(signed=ahead)),
    }
    for code, (status, sent) in cases.items():
        response = post(url, sent)
        assert response.status_code == status, (code, response.text)
        assert response.json()["error"]["code"] == code, response.text
        assert state(hosted.public_store) == before, code
    assert post(url, body(signed=foreign)).json()["error"]["code"] == "bad_signature"
    # the client raises what the datanet raised
    for error, call in (
        (
            QualityError,
            lambda: dn.contribute([{"instruction": "a", "response": "b"}], contributor=ALICE),
        ),
        (DuplicateRecordError, lambda: dn.contribute(rows(1, "base"), contributor=ALICE)),
        (NonceError, lambda: dn.contribute(good, signed=old)),
        (SignatureError, lambda: dn.contribute(good, signed=foreign)),
    ):
        with pytest.raises(error):
            call()
    with pytest.raises(SchemaError):  # refused here, before anything is sent
        dn.contribute([{"instruction": "x y z"}], contributor=ALICE)
    assert state(hosted.public_store) == before
    assert len(dn.contribute(good, signed=fresh)) == 2


def test_concurrent_clients_store_every_record_once(hosted: Hosted) -> None:
    started = time.perf_counter()
    outcomes = run_writers(hosted.server.url("crowd"), writers=4, count=300, batch=50, shared=40)
    took = time.perf_counter() - started
    with Datanet.open(hosted.crowd_store) as local:
        check_exactly_once(local, outcomes, 300, 40)
        assert len(local) == 4 * 300 + 40
        assert local.audit().ok
    retried = sum(o.nonce_refusals + o.duplicate_refusals for o in outcomes)
    print(f"1240 records from 4 client processes in {took:.1f} s, {retried} refusals retried")


def test_reviews_and_validators_are_signed_where_the_keys_are(hosted: Hosted) -> None:
    dn = hosted.remote("medqa")
    receipts = dn.contribute(rows(2, "review"), contributor=BOB)
    target = receipts[0].record_hash
    with pytest.raises(AccessDeniedError, match="not allowed to review"):
        dn.review(target, accept=False, reason="spam", validator=CAROL)
    dn.add_validator(CAROL, owner=OWNER)
    assert CAROL.address in dn.validators()
    dn.review(target, accept=False, reason="copied from a textbook", validator=CAROL)
    assert dn.get(target).status == "rejected"
    dn.review(target, accept=True, reason="the source is cited", validator=CAROL)
    replay = dn.reviews(target)[0]  # a stranger re-posts the old rejection
    body = {
        "datanet_id": dn.id, "record_hash": target, "accept": False,
        "reason": replay.reason, "validator": replay.validator, "signature": replay.signature,
    }  # fmt: skip
    response = httpx.post(hosted.server.url("medqa") + "/reviews", json=body, timeout=30)
    assert (response.status_code, response.json()["error"]["code"]) == (409, "replayed")
    assert dn.get(target).status == "accepted"
    assert dn.reputation(BOB).rejected == 0


def test_a_signed_snapshot_call_freezes_once(hosted: Hosted) -> None:
    """Whoever saw the owner's signed call cannot replay it into more snapshots; the owner's
    own snapshots in quick succession are separate calls."""
    dn = hosted.remote("medqa")
    dn.contribute(rows(2, "replay"), contributor=ALICE)
    call = sign_call(dn.id, "snapshot", OWNER, detail="once")
    url, header = hosted.server.url("medqa") + "/snapshots", {CALL_HEADER: call.model_dump_json()}
    first = httpx.post(url, headers=header, timeout=30)
    assert first.status_code == 201, first.text
    before = dn.snapshots()
    again = httpx.post(url, headers=header, timeout=30)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "replayed")
    assert dn.snapshots() == before  # the replay froze nothing
    a, b = dn.snapshot(owner=OWNER), dn.snapshot(owner=OWNER)  # within one second: two calls
    assert dn.snapshots() == [*before, a.id, b.id]


def test_spent_calls_are_forgotten_once_stale() -> None:
    from openledger.data.remote_signing import CALL_TTL
    from openledger.gateway.datanets.service import DatanetService

    service = DatanetService([])
    call = sign_call("0x" + "11" * 32, "snapshot", OWNER, at=1_000)
    service.spend_call(call, now=1_000)
    with pytest.raises(NonceError, match="used already"):
        service.spend_call(call, now=1_000 + CALL_TTL)
    # past its freshness the service forgets it (check_call refuses it as too old by then)
    service.spend_call(call, now=1_001 + CALL_TTL)


def test_a_proof_served_over_http_verifies_on_the_embedded_chain(hosted: Hosted) -> None:
    from openledger.chain import connect

    dn = hosted.remote("medqa")
    dn.contribute(rows(5, "chain"), contributor=ALICE)
    with pytest.raises(AccessDeniedError):
        dn.snapshot(owner=ALICE)
    snap = dn.snapshot(owner=OWNER)
    assert dn.latest_snapshot() == snap
    protocol = connect().deploy_protocol()
    schema = snap.manifest["schema_hash"]
    registered = protocol.datanets.register_datanet("medqa", schema, snap.manifest_hash, dn.url)
    chain_id = registered.event("DatanetRegistered")["datanetId"]
    index = protocol.datanets.publish_snapshot(chain_id, snap.root, snap.count).event(
        "SnapshotPublished"
    )["index"]
    target = dn.record_hash(rows(5, "chain")[3])
    digest, contributor = snap.leaf(target)
    proof = snap.proof(target)
    assert contributor == ALICE.address
    assert protocol.datanets.contains_record(chain_id, index, digest, contributor, proof)
    assert not protocol.datanets.contains_record(chain_id, index, digest, BOB.address, proof)
    assert len(snap.record_hashes()) == snap.count  # the leaves give the root, checked here
    with pytest.raises(DataNotFoundError):
        snap.proof("0x" + "12" * 32)


def test_a_private_datanets_records_are_unreadable_without_a_grant(hosted: Hosted) -> None:
    clinic = hosted.remote("clinic")
    secret = rows(2, "dosage")
    stored = Datanet.open(hosted.private_store)
    receipts = stored.contribute(secret, contributor=OWNER)
    stored.close()
    target = receipts[0].record_hash
    snap = clinic.snapshot(owner=OWNER)
    base = hosted.server.url("clinic")
    for path in ("/records", f"/records/{target}", "/snapshots/1/leaves",
                 f"/snapshots/1/proofs/{target}", f"/flags/{target}"):  # fmt: skip
        response = httpx.get(base + path, timeout=30)
        assert (response.status_code, response.json()["error"]["code"]) == (403, "access_denied")
        assert "dosage" not in response.text
    with pytest.raises(AccessDeniedError):
        clinic.contribute(rows(1, "guess"), contributor=BOB)  # not even whether it is stored
    request = clinic.request_access(BOB, "triage research")
    # NOTE: the same signed call sent again (a retry, a replay) files nothing new
    replayed = sign_call(clinic.id, "request-access", BOB, detail="triage research")
    for _ in range(2):
        response = httpx.post(
            base + "/access-requests",
            json={"purpose": "triage research"},
            headers={"X-OpenLedger-Call": replayed.model_dump_json()},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        assert response.json()["id"] == request.id
    with pytest.raises(AccessDeniedError):
        clinic.grant_for(request.id, requester=BOB)  # pending
    with pytest.raises(AccessDeniedError):
        clinic.approve(request.id, owner=BOB)
    clinic.approve(request.id, owner=OWNER, ttl_seconds=600)
    with pytest.raises(AccessDeniedError):
        clinic.grant_for(request.id, requester=CAROL)
    grant = clinic.grant_for(request.id, requester=BOB)
    # bound grants: the grant alone (copied from a log) reads nothing without Bob's key
    with pytest.raises(AccessDeniedError, match="held by their grantee"):
        clinic.get(target, grant=grant)
    copied = {"X-OpenLedger-Grant": grant.model_dump_json()}
    assert httpx.get(base + "/records", headers=copied, timeout=30).status_code == 403
    mallory_call = sign_call(clinic.id, "read", CAROL).model_dump_json()
    stolen = {**copied, "X-OpenLedger-Call": mallory_call}
    assert httpx.get(base + "/records", headers=stolen, timeout=30).status_code == 403
    held = grant.bind(BOB)
    assert [r.record.instruction for r in clinic.records(grant=held)] == [
        r["instruction"] for r in secret
    ]
    assert snap.proof(target, grant=held)
    assert clinic.reviews(grant=held) == []
    clinic.revoke(request.id, owner=OWNER)
    assert not clinic.can_read(held)


def test_the_service_mounts_beside_other_routes(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from openledger.gateway.datanets import DatanetService, mount_datanets

    dn = Datanet.create(tmp_path / "dn", name="mounted", schema=InstructionRecord)
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, str]:
        return {"object": "list"}

    service = DatanetService([dn])
    mount_datanets(app, service)
    with TestClient(app) as client:
        assert client.get("/v1/models").json() == {"object": "list"}
        listing = client.get("/v1/datanets/").json()["data"]
        assert [d["name"] for d in listing] == ["mounted"]
        missing = client.get("/v1/datanets/nothing")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    service.close()


def test_a_body_over_the_limit_is_a_413_and_stores_nothing(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from openledger.data.wire import ERROR_CODES, error_from_code
    from openledger.exceptions import PayloadTooLargeError
    from openledger.gateway.datanets import DatanetService, mount_datanets

    dn = Datanet.create(tmp_path / "dn", name="small", schema=InstructionRecord)
    app = FastAPI()
    service = DatanetService([dn], max_body_bytes=2048)
    mount_datanets(app, service)
    records = [{"instruction": "x" * 3000, "response": "y"}]
    body = json.dumps({"records": records, "signed": {}}).encode()

    def chunks() -> Iterator[bytes]:  # NOTE: no content-length: cut while it is read
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    with TestClient(app) as client:
        url = "/v1/datanets/small/contributions"
        for sent in (body, chunks()):
            response = client.post(url, content=sent, headers={"content-type": "application/json"})
            assert response.status_code == 413, response.text
            assert response.json()["error"]["code"] == "request_too_large"
            assert "2048 bytes" in response.json()["error"]["message"]
    assert ERROR_CODES["request_too_large"][0] == 413
    assert isinstance(error_from_code("request_too_large", "x"), PayloadTooLargeError)
    assert len(dn) == 0
    service.close()


def test_the_cli_serves_a_folder_and_contributes_to_it_by_url(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.data.datanet_servers import free_port, wait_healthy

    folder = tmp_path / "medqa"
    Datanet.create(folder, name="medqa", schema=InstructionRecord).close()
    key = tmp_path / "alice.key"
    key.write_text("0x" + "a1" * 32 + "\n")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(4, "cli")))
    port = free_port()
    command = [sys.executable, "-m", "openledger.cli", "datanets", "serve", str(folder)]
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", lambda: process.poll() is None)
        url = f"http://127.0.0.1:{port}/v1/datanets/medqa"
        contribute = [sys.executable, "-m", "openledger.cli", "datanet", "contribute",
                      str(tmp_path / "rows.jsonl"), "--url", url, "--key", str(key)]  # fmt: skip
        done = subprocess.run(contribute, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["records"] == 4
        again = subprocess.run(contribute, capture_output=True, text=True, timeout=120)
        assert again.returncode == 2
        assert "already in datanet 'medqa'" in again.stderr
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    served = json.loads((tmp_path / "server.log").read_text().splitlines()[0])
    assert served["datanets"][0]["url"] == url
    with Datanet.open(folder) as dn:
        assert len(dn) == 4
