"""End to end: contribute -> train -> serve -> attribute -> settle -> every payee claims its split.

Runs on the embedded chain and on anvil (anvil skips where it is not installed, as in
tests/chain).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.attribution.conftest import colour_records, make_snapshot, train

from openledger.attribution import RewardPolicy, attribute, settle
from openledger.chain import Chain, connect
from openledger.crypto import Account
from openledger.data import InstructionRecord, Snapshot
from openledger.train import TrainingRun, merge_and_save

CHAIN_CONFTEST = Path(__file__).resolve().parents[1] / "chain" / "conftest.py"


def running_anvil() -> object:
    spec = importlib.util.spec_from_file_location("chain_fixtures", CHAIN_CONFTEST)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.running_anvil()


@pytest.fixture(params=["embedded", "anvil"])
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    if request.param == "embedded":
        yield connect()
        return
    with running_anvil() as url:  # type: ignore[attr-defined]
        yield connect(url, receipt_timeout=30)


@pytest.fixture(scope="module")
def served(
    memorising_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Snapshot, TrainingRun, list[Account], str]:
    """A datanet where only the first contributor teaches the plum fact, trained and served."""
    from openledger.serve import Engine, SamplingParams

    folder = tmp_path_factory.mktemp("e2e")
    accounts = [Account.create() for _ in range(3)]
    fact = [
        InstructionRecord(instruction="Code plum?", response="PLUM ok."),
        InstructionRecord(instruction="code plum!", response="PLUM ok."),
    ]
    groups = [fact, colour_records(["red", "blue"]), colour_records(["gold", "teal"])]
    snapshot = make_snapshot(folder / "dn", groups, accounts)
    run = train(
        memorising_llama_dir, snapshot, folder / "adapter", max_steps=150, learning_rate=2e-2
    )
    engine = Engine(str(merge_and_save(run.adapter, folder / "merged")))
    messages = [{"role": "user", "content": "Code plum?"}]
    answer = engine.generate(messages, SamplingParams(max_tokens=8))[0].text.strip()
    return snapshot, run, accounts, answer


def test_contribute_train_serve_attribute_settle_claim(
    served: tuple[Snapshot, TrainingRun, list[Account], str], chain: Chain
) -> None:
    snapshot, run, accounts, answer = served
    assert answer.startswith("PLUM ok")
    report = attribute(run.adapter, snapshot, prompt="Code plum?", completion=answer)
    shares = report.contributor_shares()
    assert max(shares, key=shares.__getitem__) == accounts[0].address
    protocol = chain.deploy_protocol()
    developer = Account.create()
    policy = RewardPolicy(developer_bps=1_000, developer=developer.address)
    pool = 10**18 + 7
    epoch = settle([report], pool_wei=pool, protocol=protocol, policy=policy)
    assert protocol.rewards.get_epoch(epoch.epoch_id).total == pool
    assert sum(epoch.split.payouts.values()) == pool
    assert epoch.split.developer == pool // 10
    assert f"Epoch {epoch.epoch_id} (root {epoch.tree.root[:18]}" in epoch._repr_html_()
    for payee, amount in epoch.split.payouts.items():
        epoch.claim(payee, sender=chain.default_account)
        assert protocol.token.balance_of(payee) == amount
        assert protocol.rewards.is_claimed(epoch.epoch_id, payee)
    assert protocol.rewards.get_epoch(epoch.epoch_id).remaining == 0
    second = settle([report], pool_wei=10, protocol=protocol)
    assert second.epoch_id == epoch.epoch_id + 1
