"""Settlement from the gateway's ledger: answers served over HTTP -> attribution worker ->
one reward epoch, paid once whatever is interrupted, on the embedded chain and on anvil.

A tiny Llama is fine-tuned on a two-contributor datanet, served by a real `openledger
serve` (killed with SIGKILL mid-stream once and restarted on the same ledger), and its
ledger settled. Payouts are checked against the attribution index queried directly and
an integer split computed here.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.attribution.conftest import colour_records, make_snapshot, train
from tests.chain.conftest import running_anvil
from tests.gateway.conftest import GatewayModels, Server, start_server

from openledger.attribution import SHARE_UNITS, InfluenceIndex, largest_remainder
from openledger.chain import Chain, FlagKind, Protocol, connect
from openledger.crypto import Account, keccak256_hex
from openledger.data import Snapshot
from openledger.exceptions import AttributionInputError, ConfigError, SettlementError
from openledger.gateway import (
    AttributionWorker,
    ReceiptLedger,
    claims_of,
    load_operator_key,
    settle_ledger,
)
from openledger.gateway.ledger import pin_settings

WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "plum", "rust"]
FAR_WINDOW = 2**40  # NOTE: settle every window, open ones too (tests do not wait a day)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module(one_torch_thread: None) -> None:
    """Training and the index run on one torch thread here (see tests/conftest.py)."""


@dataclass
class Served:
    """What the gateway served and where its books are."""

    folder: Path
    base: Path
    ledger: Path
    snapshot: Snapshot
    adapter: Path
    index: Path
    accounts: list[Account]
    answers: list[tuple[str, str]]
    base_requests: int


@pytest.fixture(scope="module")
def served(memorising_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Train, index and serve an adapter; answer over HTTP, SIGKILL the server mid-stream,
    restart it on the same ledger, answer more."""
    folder = tmp_path_factory.mktemp("settle")
    accounts = [Account.create(), Account.create()]
    records = colour_records(WORDS)
    snapshot = make_snapshot(folder / "dn", [records[:6], records[6:]], accounts)
    run = train(memorising_llama_dir, snapshot, folder / "adapter")
    InfluenceIndex.build(run.adapter, snapshot, output_dir=folder / "index", progress=False)
    models = GatewayModels(memorising_llama_dir, {"facts": run.adapter.path})
    extra = {"epoch_seconds": 1, "engine": {"max_num_seqs": 8, "kv_cache_memory": 8 * 2**20}}
    server = start_server(folder / "gw", models, extra=extra)
    answers = _ask(server, WORDS[:5])
    base = _ask_base(server)
    _kill_mid_stream(server)
    server = start_server(folder / "gw", models, ledger=server.ledger, key=server.key, extra=extra)
    try:
        answers += _ask(server, WORDS[5:8])
    finally:
        assert server.stop() == 0
    index = folder / "index"
    return Served(
        folder,
        memorising_llama_dir,
        server.ledger,
        snapshot,
        run.adapter.path,
        index,
        accounts,
        answers,
        base,
    )


def _ask(server: Server, words: list[str]) -> list[tuple[str, str]]:
    client = server.client()
    found = []
    for word in words:
        prompt = f"Code {word}?"
        reply = client.chat.completions.create(
            model="facts", messages=[{"role": "user", "content": prompt}], max_tokens=6
        )
        assert reply.usage is not None
        found.append((prompt, reply.choices[0].message.content or ""))
    return found


def _ask_base(server: Server) -> int:
    reply = server.client().completions.create(model="tiny", prompt="Code red?", max_tokens=4)
    assert reply.usage is not None
    return 1


def _kill_mid_stream(server: Server) -> None:
    """SIGKILL the server while a stream is open; that request never completes."""
    started = threading.Event()

    def stream() -> None:
        try:
            chunks = server.client(max_retries=0).chat.completions.create(
                model="facts",
                messages=[{"role": "user", "content": "Code navy?"}],
                stream=True,
                extra_body={"ignore_eos": True},
            )
            for _ in chunks:
                started.set()
        except Exception:  # NOTE: the connection dies with the server: expected
            started.set()

    worker = threading.Thread(target=stream)
    worker.start()
    assert started.wait(60)
    server.stop(signal.SIGKILL)
    worker.join(60)


@pytest.fixture(params=["embedded", "anvil"])
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    if request.param == "embedded":
        yield connect()
        return
    with running_anvil() as url:
        yield connect(url, receipt_timeout=30)


def _protocol(chain: Chain, snapshot: Snapshot) -> Protocol:
    """Deploy the protocol and publish the datanet's snapshot root on it."""
    protocol = chain.deploy_protocol()
    receipt = protocol.datanets.register_datanet("facts")
    datanet_id = receipt.event("DatanetRegistered")["datanetId"]
    protocol.datanets.publish_snapshot(datanet_id, snapshot.root, snapshot.count)
    return protocol


def _copy(ledger: Path, folder: Path, name: str) -> Path:
    """A consistent copy of a ledger (and its operator key) through SQLite's backup API."""
    target = folder / name
    with sqlite3.connect(ledger) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    key = Path(f"{ledger}.operator-key")
    Path(f"{target}.operator-key").write_text(key.read_text())
    os.chmod(f"{target}.operator-key", 0o600)
    return target


def _attributed(served: Served, name: str) -> Path:
    path = _copy(served.ledger, served.folder, name)
    with ReceiptLedger(path) as ledger:
        waiting = len(_answers(ledger))
        worker = AttributionWorker(ledger, {str(served.adapter): str(served.index)})
        done = worker.run_once()
    assert (done.attributed, done.waiting) == (waiting, 0)
    assert waiting >= len(served.answers)
    return path


def _answers(ledger: ReceiptLedger) -> list[tuple[str, list[tuple[str, str]]]]:
    rows = ledger.read("SELECT request_id, pairs FROM answers ORDER BY rowid")
    return [(r, [tuple(p) for p in json.loads(pairs)]) for r, pairs in rows]  # type: ignore[misc]


def _credited(path: Path) -> int:
    with ReceiptLedger(path) as ledger:
        return int(ledger.read("SELECT COUNT(DISTINCT request_id) FROM attributions")[0][0])


def _operator(path: Path) -> Account:
    return load_operator_key(Path(f"{path}.operator-key"))


def test_the_ledger_holds_one_receipt_per_completed_response(served: Served) -> None:
    with ReceiptLedger(served.ledger) as ledger:
        receipts = [r.receipt for r in ledger.receipts()]
        answers = ledger.read("SELECT COUNT(*) FROM answers")[0][0]
    completed = len(served.answers) + served.base_requests
    # NOTE: the killed stream may have been metered as aborted by the first server's
    # cleanup, never twice; everything completed is there exactly once.
    assert completed <= len(receipts) <= completed + 1
    assert len({r.request_id for r in receipts}) == len(receipts)
    assert answers == sum(1 for r in receipts if r.adapter_ids and r.completion_tokens)


def test_the_worker_credits_what_the_index_says(served: Served) -> None:
    with ReceiptLedger(served.ledger) as ledger:
        pending = _answers(ledger)
    assert [pairs[0] for _, pairs in pending][:5] == served.answers[:5]
    path = _attributed(served, "worker.db")
    index = InfluenceIndex.load(served.index, served.adapter)
    with ReceiptLedger(path) as ledger:
        assert ledger.read("SELECT COUNT(*) FROM answers")[0][0] == 0
        rows = dict(ledger.read("SELECT request_id, shares FROM attributions"))
    assert set(rows) == {request_id for request_id, _ in pending}
    # NOTE: the reference scores the same answers in the same batch, so the worker's
    # bookkeeping (which report is whose) must match it exactly; batched vs one-by-one
    # scoring is compared within its bound in tests/attribution.
    reports = index.attribute_many([pair for _, pairs in pending for pair in pairs])
    for (request_id, _), report in zip(pending, reports, strict=True):
        expected = report.contributor_weights()
        assert json.loads(rows[request_id])["weights"] == expected
        assert 0 < sum(expected.values()) <= SHARE_UNITS + len(expected)


def test_settle_pays_every_receipt_once_and_serves_claims(served: Served, chain: Chain) -> None:
    path = _attributed(served, f"settle-{chain.chain_id}.db")
    protocol = _protocol(chain, served.snapshot)
    # A validator flags a record of a bonded contributor: the epoch reports the slash.
    bonds, flagged = protocol.require_bonds(), served.accounts[1]
    datanet = protocol.datanets.datanet_id_of(chain.default_account.address, "facts")
    bonds.set_policy(datanet, 10**19, 1_000, 86_400)
    chain.fund(flagged.address, 10**17)
    protocol.token.transfer(flagged.address, 10**19)
    bonds.approve_and_bond(datanet, 10**19, sender=flagged)
    bonds.flag(datanet, "0x" + "44" * 32, flagged.address, FlagKind.DUPLICATE, "0x" + "55" * 32)
    pool = 10**18 + 3
    start = protocol.token.balance_of(protocol.rewards.address)
    with ReceiptLedger(path) as ledger:
        done = settle_ledger(
            ledger, protocol, operator=_operator(path), pool_wei=pool, through_window=FAR_WINDOW
        )
        assert done.epoch_id is not None
        assert done.bond_penalties == {flagged.address: 10**18}
        assert len(done.settled) == _credited(path)
        assert len(done.nothing_owed) == ledger.count_receipts() - _credited(path)
        assert not done.waiting
        assert not done.held
        assert sum(done.payouts.values()) == pool == done.total
        assert done.payouts == _expected_payouts(ledger, pool)
        again = settle_ledger(
            ledger, protocol, operator=_operator(path), pool_wei=pool, through_window=FAR_WINDOW
        )
        assert (again.epoch_id, again.settled, again.nothing_owed) == (None, [], [])
        assert again.bond_penalties == {}
        payee = served.accounts[0].address
        (claim,) = claims_of(ledger, payee, protocol)
    assert protocol.token.balance_of(protocol.rewards.address) - start == pool
    assert protocol.rewards.posted_epoch_ids().count(done.epoch_id) == 1
    assert claim.amount == done.payouts[payee]
    protocol.rewards.claim_for(claim.epoch_id, payee, claim.amount, claim.proof)
    assert protocol.token.balance_of(payee) == claim.amount
    with ReceiptLedger(path) as ledger:
        assert claims_of(ledger, payee, protocol) == []
        assert len(claims_of(ledger, payee)) == 1  # NOTE: without a chain: every payout


def _expected_payouts(ledger: ReceiptLedger, pool: int) -> dict[str, int]:
    """Contributor weights = share x adapter weight x tokens, split by largest remainder."""
    weights: dict[str, int] = {}
    rows = ledger.read(
        "SELECT r.prompt_tokens + r.completion_tokens, a.shares FROM receipts r "
        "JOIN attributions a ON a.request_id = r.request_id"
    )
    for tokens, shares in rows:
        for account, share in json.loads(shares)["weights"].items():
            weights[account] = weights.get(account, 0) + share * tokens
    return {a: int(w) for a, w in largest_remainder(weights, pool).items() if w}


class Crash(BaseException):
    """Stands for the process dying at that point."""


@pytest.mark.parametrize("when", ["before_sending", "after_sending"])
def test_an_interrupted_settle_retried_pays_once(served: Served, chain: Chain, when: str) -> None:
    path = _attributed(served, f"crash-{when}-{chain.chain_id}.db")
    protocol = _protocol(chain, served.snapshot)
    real = protocol.rewards.post_reward_tree

    def dying(*args: Any, **kwargs: Any) -> Any:
        if when == "after_sending":
            real(*args, **kwargs)
        raise Crash

    protocol.rewards.post_reward_tree = dying  # type: ignore[method-assign]
    pool = 5 * 10**17
    start = protocol.token.balance_of(protocol.rewards.address)
    operator = _operator(path)
    with ReceiptLedger(path) as ledger, pytest.raises(Crash):
        settle_ledger(ledger, protocol, operator=operator, pool_wei=pool, through_window=FAR_WINDOW)
    protocol.rewards.post_reward_tree = real  # type: ignore[method-assign]
    with ReceiptLedger(path) as ledger:
        assert ledger.read("SELECT state FROM epochs") == [("prepared",)]
    with ReceiptLedger(path) as ledger:
        retried = settle_ledger(
            ledger, protocol, operator=_operator(path), pool_wei=pool, through_window=FAR_WINDOW
        )
        (epoch_id,) = retried.recovered
        assert retried.recovered[epoch_id] == ("confirmed" if when == "after_sending" else "posted")
        assert ledger.read("SELECT state FROM epochs") == [("posted",)]
        settled = ledger.read("SELECT COUNT(*) FROM settled WHERE epoch_id = ?", (epoch_id,))
    assert retried.epoch_id is None  # NOTE: every receipt was in the recovered epoch
    assert settled == [(_credited(path),)]
    assert protocol.rewards.posted_epoch_ids() == [epoch_id]
    assert protocol.token.balance_of(protocol.rewards.address) - start == pool


def test_settle_killed_at_any_point_pays_once_on_anvil(served: Served) -> None:
    """`openledger settle` SIGKILLed at spread-out moments, then run to the end: one epoch,
    the pool paid in once, every credited receipt settled once."""
    from openledger.chain import SETTLER_ROLE

    path = _attributed(served, "killed.db")
    operator = _operator(path)
    pool = 7 * 10**17
    with running_anvil() as url:
        chain = connect(url, receipt_timeout=30)
        protocol = _protocol(chain, served.snapshot)
        protocol.rewards.grant_role(SETTLER_ROLE, operator.address)
        protocol.token.transfer(operator.address, 3 * pool)  # NOTE: room to show a double pay
        chain.fund(operator.address, 10**18)
        addresses = served.folder / "protocol.json"
        addresses.write_text(protocol.addresses.model_dump_json())
        start = protocol.token.balance_of(protocol.rewards.address)
        command = [
            sys.executable, "-m", "openledger.cli", "settle", "--ledger", str(path),
            "--chain", url, "--protocol", str(addresses), "--pool-wei", str(pool),
            "--through-window", str(FAR_WINDOW),
        ]  # fmt: skip
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        for delay in (1.0, 2.5):  # NOTE: while it starts, connects and reads
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
            time.sleep(delay)
            process.kill()
            process.wait(timeout=60)
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        prepared = _kill_once_prepared(process, path)
        final = subprocess.run(command, env=env, capture_output=True, check=True, timeout=120)
        last = json.loads(final.stdout)
        if prepared:  # NOTE: killed between persisting the epoch and marking it posted
            assert last["recovered"] in ({"1": "posted"}, {"1": "confirmed"})
            assert last["epoch_id"] is None
        epochs = protocol.rewards.posted_epoch_ids()
        paid = protocol.token.balance_of(protocol.rewards.address) - start
    assert len(epochs) == 1
    assert paid == pool
    with ReceiptLedger(path) as ledger:
        assert ledger.read("SELECT epoch_id, state FROM epochs") == [(epochs[0], "posted")]
        settled = ledger.read("SELECT COUNT(*) FROM settled WHERE epoch_id = ?", (epochs[0],))
    assert settled == [(_credited(path),)]


def _kill_once_prepared(process: subprocess.Popen[bytes], path: Path) -> bool:
    """SIGKILL ``process`` as soon as the ledger holds a prepared epoch; returns whether it
    was still prepared then (False: the run had already finished)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with sqlite3.connect(path, timeout=30) as conn:
            rows = conn.execute("SELECT state FROM epochs").fetchall()
        if rows:
            process.kill()
            process.wait(timeout=60)
            return rows == [("prepared",)]
        time.sleep(0.01)
    process.wait(timeout=60)
    return False


def test_ledger_settings_are_pinned(tmp_path: Path) -> None:
    with ReceiptLedger(tmp_path / "l.db") as ledger:
        operator = Account.create()
        pin_settings(ledger, operator.address, 60, {"chainId": 1})
        pin_settings(ledger, operator.address, 60, {"chainId": 1})
        with pytest.raises(ConfigError, match="epoch_seconds = 60, not 30"):
            pin_settings(ledger, operator.address, 30, {"chainId": 1})
        with pytest.raises(ConfigError, match="operator"):
            pin_settings(ledger, Account.create().address, 60, {"chainId": 1})
        with pytest.raises(ConfigError, match="receipt_domain"):
            pin_settings(ledger, operator.address, 60, {"chainId": 2})
        with pytest.raises(ConfigError, match="exactly one of pool_wei"):
            settle_ledger(ledger, None, operator=operator)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="pool_wei must be > 0, got 0"):
            settle_ledger(ledger, None, operator=operator, pool_wei=0)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="is signed by operator"):
            settle_ledger(ledger, None, operator=Account.create(), pool_wei=1)  # type: ignore[arg-type]


def test_a_receipt_whose_snapshot_is_not_published_is_held(served: Served) -> None:
    path = _attributed(served, "held.db")
    protocol = connect().deploy_protocol()  # NOTE: the datanet's root is never published
    with ReceiptLedger(path) as ledger:
        done = settle_ledger(
            ledger, protocol, operator=_operator(path), pool_wei=10, through_window=FAR_WINDOW
        )
        assert done.epoch_id is None
        assert len(done.held) == _credited(path)
        assert all("not published on chain" in why for why in done.held.values())
        assert ledger.read("SELECT COUNT(*) FROM settled WHERE epoch_id IS NOT NULL") == [(0,)]
        again = settle_ledger(
            ledger,
            protocol,
            operator=_operator(path),
            pool_wei=10,
            through_window=FAR_WINDOW,
            require_published_snapshots=False,
        )
    assert len(again.settled) == _credited(path)
    assert again.total == 10


def test_receipts_wait_for_attribution_and_settle_later(served: Served) -> None:
    path = _copy(served.ledger, served.folder, "waiting.db")
    protocol = _protocol(connect(), served.snapshot)
    operator = _operator(path)
    with ReceiptLedger(path) as ledger:
        waiting = len(_answers(ledger))
        first = settle_ledger(
            ledger, protocol, operator=operator, pool_wei=10**6, through_window=FAR_WINDOW
        )
        assert (first.epoch_id, len(first.waiting)) == (None, waiting)
        assert len(first.nothing_owed) == ledger.count_receipts() - waiting
        AttributionWorker(ledger, {str(served.adapter): str(served.index)}).run_once()
        second = settle_ledger(
            ledger, protocol, operator=operator, pool_wei=10**6, through_window=FAR_WINDOW
        )
    assert second.epoch_id is not None
    assert (len(second.settled), second.waiting, second.nothing_owed) == (waiting, [], [])


def test_claims_over_http_after_a_restart(served: Served) -> None:
    path = _attributed(served, "claims.db")
    protocol = _protocol(connect(), served.snapshot)
    with ReceiptLedger(path) as ledger:
        done = settle_ledger(
            ledger, protocol, operator=_operator(path), pool_wei=999, through_window=FAR_WINDOW
        )
    payee = served.accounts[1].address
    server = start_server(
        served.folder / "claims",
        GatewayModels(served.base, {}),
        ledger=path,
        extra={"epoch_seconds": 1, "engine": {"max_num_seqs": 4, "kv_cache_memory": 4 * 2**20}},
    )
    try:
        body = server.get(f"/v1/claims/{payee.lower()}").json()
        bad = server.get("/v1/claims/0x1234")
        anonymous = server.get(f"/v1/claims/{payee}", key="sk-nope")
    finally:
        server.stop()
    assert body["account"] == payee
    (claim,) = body["data"]
    assert (claim["epoch_id"], int(claim["amount"])) == (done.epoch_id, done.payouts[payee])
    assert claim["root"] == done.root
    protocol.rewards.claim_for(claim["epoch_id"], payee, int(claim["amount"]), claim["proof"])
    assert protocol.token.balance_of(payee) == done.payouts[payee]
    assert bad.status_code == 400
    assert "address" in bad.json()["error"]["message"]
    assert anonymous.status_code == 401


def test_a_prepared_epoch_of_another_contract_stops_settlement(served: Served) -> None:
    path = _attributed(served, "elsewhere.db")
    chain = connect()
    first, second = _protocol(chain, served.snapshot), _protocol(chain, served.snapshot)

    def dying(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    first.rewards.post_reward_tree = dying  # type: ignore[method-assign]
    operator = _operator(path)
    with ReceiptLedger(path) as ledger:
        with pytest.raises(Crash):
            settle_ledger(ledger, first, operator=operator, pool_wei=5, through_window=FAR_WINDOW)
        with pytest.raises(SettlementError, match=first.rewards.address):
            settle_ledger(ledger, second, operator=operator, pool_wei=5, through_window=FAR_WINDOW)
        assert ledger.read("SELECT state FROM epochs") == [("prepared",)]


def test_the_gateway_credits_answers_itself(served: Served, tmp_path: Path) -> None:
    """With `attribution_indexes`, the worker runs inside the gateway between requests."""
    models = GatewayModels(served.base, {"facts": served.adapter})
    extra = {
        "attribution_indexes": {"facts": str(served.index)},
        "attribution_interval": 0.2,
        "engine": {"max_num_seqs": 4, "kv_cache_memory": 4 * 2**20},
    }
    server = start_server(tmp_path, models, extra=extra)
    try:
        _ask(server, ["red", "teal"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with ReceiptLedger(server.ledger) as ledger:
                unsettled, awaiting = ledger.count_pending()
            if awaiting == 0:
                break
            time.sleep(0.2)
    finally:
        assert server.stop() == 0
    assert (unsettled, awaiting) == (2, 0)
    assert _credited(server.ledger) == 2


def test_the_commands_explain_bad_input_and_print_claims(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from openledger.cli import main

    missing = str(tmp_path / "missing.db")
    chain_args = ["--chain", "http://127.0.0.1:1", "--protocol", str(tmp_path / "p.json")]
    assert main(["settle", "--ledger", missing, *chain_args, "--pool-wei", "1"]) == 2
    assert f"no ledger at {missing}" in capsys.readouterr().err
    assert not Path(missing).exists()  # NOTE: settling never creates an empty ledger
    assert main(["attribute", "--ledger", str(served.ledger), "--index", "nonsense"]) == 2
    assert "--index takes ADAPTER=INDEX" in capsys.readouterr().err
    path = _attributed(served, "cli.db")
    with ReceiptLedger(path) as ledger:
        done = settle_ledger(
            ledger,
            _protocol(connect(), served.snapshot),
            operator=_operator(path),
            pool_wei=10**9,
            through_window=FAR_WINDOW,
        )
    payee = served.accounts[0].address
    assert main(["claims", payee, "--ledger", str(path)]) == 0
    (claim,) = json.loads(capsys.readouterr().out)
    assert (claim["epoch_id"], int(claim["amount"])) == (done.epoch_id, done.payouts[payee])
    assert main(["claims", payee, "--ledger", str(path), "--chain", "http://127.0.0.1:1"]) == 2
    assert "--chain and --protocol together" in capsys.readouterr().err


# -- sampling policy and span indexes --------------------------------------------------------


def _synthetic_ledger(served: Served, path: Path, windows: dict[int, int]) -> list[str]:
    """A ledger of `count` facts-adapter receipts per window (epoch_seconds=100), each with
    one answer to attribute; returns their request ids in order."""
    from openledger.gateway import GatewayReceipt, canonical_hash, receipt_domain
    from openledger.train import Adapter

    adapter = Adapter.open(served.adapter)
    operator = Account.create()
    domain = receipt_domain(1)
    ids = []
    with ReceiptLedger(path) as ledger:
        pin_settings(ledger, operator.address, 100, domain)
        for epoch, count in windows.items():
            for n in range(count):
                word = WORDS[(epoch + n) % len(WORDS)]
                request_id = keccak256_hex(f"{path.name}/{epoch}/{n}".encode())
                receipt = GatewayReceipt(
                    request_id=request_id,
                    payer=operator.address,
                    adapter_names=("facts",),
                    adapter_ids=(adapter.id,),
                    adapter_weights=(SHARE_UNITS,),
                    prompt_tokens=5,
                    completion_tokens=4,
                    prompt_hash=canonical_hash(word),
                    answer_hash=canonical_hash([word]),
                    timestamp=epoch * 100 + n,
                    epoch=epoch,
                )
                answers = [(f"Code {word}?", f"{word.upper()} ok.")]
                ledger.record(receipt.sign(operator, domain), answers=answers)
                ids.append(request_id)
    Path(f"{path}.operator-key").write_text("0x" + operator.key.hex() + "\n")
    return ids


def _credits(path: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    with ReceiptLedger(path) as ledger:
        rows = ledger.read("SELECT request_id, method, shares FROM attributions")
    return {r: (m, json.loads(s)) for r, m, s in rows}


def test_sampled_receipts_are_scored_and_the_rest_get_their_windows_mean(
    served: Served, tmp_path: Path
) -> None:
    from openledger.gateway.attribution_policy import estimate, sampled

    path = tmp_path / "sampled.db"
    # NOTE: windows 3 and 4 closed at now=500 (window 5); window 5 still open
    ids = _synthetic_ledger(served, path, {3: 12, 4: 1, 5: 6})
    with ReceiptLedger(path) as ledger:
        worker = AttributionWorker(ledger, {str(served.adapter): str(served.index)}, sample=0.5)
        done = worker.run_once(now=500)
        left = {r for (r,) in ledger.read("SELECT request_id FROM answers")}
    drawn = [i for i in ids if sampled(i, 0.5)]
    credits = _credits(path)
    window3, window4, window5 = ids[:12], ids[12:13], ids[13:]
    scored3 = [credits[i][1] for i in window3 if i in drawn]
    assert 0 < len(scored3) < len(window3)  # NOTE: fixed ids, so a fixed draw
    for request_id in window3:
        method, shares = credits[request_id]
        if request_id in drawn:
            assert method == "datainf"
        else:
            assert method == "sample"
            assert shares == estimate(scored3)
            assert shares["estimated_from"] == len(scored3)
    assert window4[0] in credits  # NOTE: drawn, or scored because its closed window had none
    assert credits[window4[0]][0] == "datainf"
    for request_id in window5:
        assert (request_id in credits) == (request_id in drawn)
    assert left == {i for i in window5 if i not in drawn}
    assert done.waiting == len(left)
    assert done.estimated == sum(1 for i in window3 if i not in drawn)


def test_the_draw_is_verifiable_and_close_to_its_rate() -> None:
    from openledger.gateway.attribution_policy import sampled

    ids = [keccak256_hex(f"draw/{n}".encode()) for n in range(4000)]
    assert [sampled(i, 0.25) for i in ids] == [sampled(i, 0.25) for i in ids]
    assert all(sampled(i, 1.0) for i in ids[:10])
    hits = sum(sampled(i, 0.25) for i in ids)
    sd = (4000 * 0.25 * 0.75) ** 0.5
    assert abs(hits - 1000) < 5 * sd  # NOTE: five standard deviations of a binomial draw


def test_an_estimate_is_the_mean_with_a_95_percent_interval() -> None:
    import statistics

    from openledger.gateway.attribution_policy import estimate

    scored = [
        {"weights": {"0xA": 600, "0xB": 400}, "penalties": {}},
        {"weights": {"0xA": 900, "0xB": 100}, "penalties": {"0xC": 30}},
        {"weights": {"0xA": 300}, "penalties": {}},
    ]
    found = estimate(scored)
    assert found["weights"] == {"0xA": 600, "0xB": 166}
    assert found["penalties"] == {"0xC": 10}
    assert found["estimated_from"] == 3
    for account, values in (("0xA", [600, 900, 300]), ("0xB", [400, 100, 0])):
        expected = 1.96 * statistics.stdev(values) / 3**0.5 / SHARE_UNITS
        assert found["ci95"][account] == pytest.approx(expected, rel=1e-12)


def test_a_span_index_credits_answers_as_it_scores_them(served: Served, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from openledger.attribution import SpanIndex
    from openledger.train import Adapter

    tokenizer = AutoTokenizer.from_pretrained(served.base)
    index = SpanIndex.build(served.snapshot, tokenizer)
    index.save(tmp_path / "spans")
    path = tmp_path / "spans.db"
    ids = _synthetic_ledger(served, path, {2: 4})
    with ReceiptLedger(path) as ledger:
        pending = dict(_answers(ledger))
        AttributionWorker(ledger, {str(served.adapter): str(tmp_path / "spans")}).run_once()
    credits = _credits(path)
    adapter_id = Adapter.open(served.adapter).id
    for request_id in ids:
        ((prompt, answer),) = pending[request_id]
        expected = index.attribute(prompt, answer, adapter_id=adapter_id).contributor_weights()
        assert credits[request_id] == ("spans", {"weights": expected, "penalties": {}})
    assert any(shares["weights"] for _, shares in credits.values())


def test_bad_sources_are_refused(served: Served, tmp_path: Path) -> None:
    with ReceiptLedger(tmp_path / "l.db") as ledger:
        with pytest.raises(AttributionInputError, match="no influence index"):
            AttributionWorker(ledger, {str(served.adapter): str(tmp_path)})
        with pytest.raises(AttributionInputError, match="sample rate"):
            AttributionWorker(ledger, {str(served.adapter): str(served.index)}, sample=0)


def test_an_index_in_memory_serves_as_its_folder_does(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    ids = _synthetic_ledger(served, path, {1: 3})
    index = InfluenceIndex.load(served.index, served.adapter)
    with ReceiptLedger(path) as ledger:
        done = AttributionWorker(ledger, {str(served.adapter): index}).run_once()
    assert done.attributed == len(ids)
    by_folder = tmp_path / "folder.db"
    same = _synthetic_ledger(served, by_folder, {1: 3})
    with ReceiptLedger(by_folder) as ledger:
        AttributionWorker(ledger, {str(served.adapter): str(served.index)}).run_once()
    in_memory, from_disk = _credits(path), _credits(by_folder)
    assert [in_memory[i] for i in ids] == [from_disk[i] for i in same]
    index.folder = None
    with ReceiptLedger(path) as ledger, pytest.raises(AttributionInputError, match="output_dir"):
        AttributionWorker(ledger, {str(served.adapter): index})


def test_a_gateway_that_keeps_no_answers_settles_crediting_nobody(
    served: Served, tmp_path: Path
) -> None:
    models = GatewayModels(served.base, {"facts": served.adapter})
    extra = {
        "record_answers": False,
        "epoch_seconds": 1,
        "engine": {"max_num_seqs": 4, "kv_cache_memory": 4 * 2**20},
    }
    server = start_server(tmp_path, models, extra=extra)
    try:
        _ask(server, ["red"])
    finally:
        assert server.stop() == 0
    with ReceiptLedger(server.ledger) as ledger:
        assert ledger.read("SELECT COUNT(*) FROM answers") == [(0,)]
        done = settle_ledger(
            ledger,
            _protocol(connect(), served.snapshot),
            operator=_operator(server.ledger),
            pool_wei=10,
            through_window=FAR_WINDOW,
        )
    assert (done.epoch_id, len(done.nothing_owed), done.waiting) == (None, 1, [])
