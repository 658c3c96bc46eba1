"""Bad input is refused with clear errors, and nothing is settled."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.attribution.conftest import colour_records, make_snapshot

from openledger.attribution import (
    AttributionReport,
    InfluenceIndex,
    Ledger,
    RecordScore,
    UsageReceipt,
    attribute,
    settle,
)
from openledger.chain import Protocol, connect
from openledger.crypto import Account
from openledger.data import Snapshot
from openledger.exceptions import (
    AttributionError,
    AttributionInputError,
    ReceiptError,
    SnapshotMismatchError,
)
from openledger.train import TrainingRun
from openledger.types import Hash32

Run = tuple[Snapshot, TrainingRun, list[Account]]
ROOT = Hash32("0x" + "cd" * 32)


def report(scores: dict[Account, float]) -> AttributionReport:
    records = tuple(
        RecordScore(Hash32("0x" + f"{i:064x}"), a.address, s, "text")
        for i, (a, s) in enumerate(scores.items())
    )
    return AttributionReport("datainf", ROOT, ROOT, None, "q", "a", records)


@pytest.fixture
def protocol() -> Protocol:
    return connect().deploy_protocol()


def assert_nothing_settled(protocol: Protocol) -> None:
    assert protocol.rewards.posted_epoch_ids() == []
    assert protocol.token.balance_of(protocol.rewards.address) == 0


def test_an_adapter_trained_on_another_snapshot_is_refused(colour_run: Run, tmp_path: Path) -> None:
    _, run, accounts = colour_run
    other = make_snapshot(tmp_path / "other", [colour_records(["lime"])], accounts[:1])
    with pytest.raises(SnapshotMismatchError, match="trained on snapshot root"):
        InfluenceIndex.build(run.adapter, other)
    with pytest.raises(SnapshotMismatchError):
        attribute(run.adapter, other, prompt="Code red?", completion="RED ok.")
    assert issubclass(SnapshotMismatchError, AttributionError)
    assert issubclass(SnapshotMismatchError, ValueError)


def test_an_index_reopened_for_another_adapter_is_refused(
    colour_run: Run, tmp_path: Path, memorising_llama_dir: Path
) -> None:
    from tests.attribution.conftest import train

    snapshot, run, _ = colour_run
    InfluenceIndex.build(run.adapter, snapshot, output_dir=tmp_path / "idx")
    other = train(memorising_llama_dir, snapshot, tmp_path / "other", max_steps=5, seed=9)
    with pytest.raises(SnapshotMismatchError, match="built for adapter"):
        InfluenceIndex.load(tmp_path / "idx", other.adapter)
    with pytest.raises(AttributionInputError, match="not an influence index"):
        InfluenceIndex.load(tmp_path, run.adapter)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "magic"}, "unknown"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"damping_scale": 0.0}, "damping_scale"),
        ({"checkpoints": ["x"]}, "'tracin' only"),
        ({"method": "tracin", "learning_rates": [0.1, 0.2]}, "one learning rate"),
    ],
)
def test_bad_index_settings_are_refused(
    colour_run: Run, settings: dict[str, object], message: str
) -> None:
    snapshot, run, _ = colour_run
    with pytest.raises(AttributionInputError, match=message):
        InfluenceIndex.build(run.adapter, snapshot, **settings)  # type: ignore[arg-type]


def test_bad_adapters_snapshots_and_queries_are_refused(colour_run: Run, tmp_path: Path) -> None:
    snapshot, run, _ = colour_run
    with pytest.raises(AttributionInputError, match="adapter must be"):
        InfluenceIndex.build(42, snapshot)  # type: ignore[arg-type]
    with pytest.raises(AttributionInputError, match="cannot attribute"):
        InfluenceIndex.build(tmp_path, snapshot)
    with pytest.raises(AttributionInputError, match="Snapshot"):
        InfluenceIndex.build(run.adapter, [1, 2])  # type: ignore[arg-type]
    index = InfluenceIndex.build(run.adapter, snapshot, "gradcos")
    with pytest.raises(AttributionInputError, match="completion"):
        index.attribute("Code red?", "  ")


def test_empty_reports_and_zero_pools_settle_nothing(protocol: Protocol) -> None:
    alice = Account.create()
    with pytest.raises(AttributionInputError, match="no reports"):
        settle([], pool_wei=10, protocol=protocol)
    with pytest.raises(AttributionInputError, match="pool_wei"):
        settle([report({alice: 1.0})], pool_wei=0, protocol=protocol)
    with pytest.raises(AttributionInputError, match="positive share"):
        settle([report({alice: -1.0})], pool_wei=10, protocol=protocol)
    empty = AttributionReport("datainf", ROOT, ROOT, None, "q", "a", ())
    with pytest.raises(AttributionInputError, match="positive share"):
        settle([empty], pool_wei=10, protocol=protocol)
    assert_nothing_settled(protocol)


def test_receipts_signed_by_a_stranger_or_tampered_settle_nothing(protocol: Protocol) -> None:
    operator, stranger, alice = Account.create(), Account.create(), Account.create()
    ledger = Ledger(protocol, [operator.address])
    receipt = UsageReceipt.from_report(report({alice: 1.0}), tokens=12)
    good = ledger.sign(receipt, operator)
    forged = ledger.sign(receipt.model_copy(update={"request_id": ROOT}), stranger)
    with pytest.raises(ReceiptError, match="not a trusted operator"):
        ledger.add([good, forged])
    tampered = good.model_copy(update={"receipt": receipt.model_copy(update={"tokens": 10**6})})
    with pytest.raises(ReceiptError, match="not a trusted operator"):
        ledger.add([tampered])
    with pytest.raises(ReceiptError, match="twice"):
        ledger.add([good, good])
    assert ledger.pending == []
    with pytest.raises(AttributionInputError, match="no pending"):
        ledger.close_epoch(100)
    assert_nothing_settled(protocol)
    ledger.add([good])
    with pytest.raises(ReceiptError, match="already recorded"):
        ledger.add([good])
    epoch = ledger.close_epoch(100)
    assert epoch.amount_of(alice.address) == 100
    assert ledger.pending == []


@pytest.mark.parametrize(
    "fields",
    [
        {"tokens": 0},
        {"weights": (1, 2)},
        {"weights": (0,)},
        {"request_id": "0x12"},
        {"contributors": ("0x12",)},
    ],
)
def test_malformed_receipts_are_refused(fields: dict[str, object]) -> None:
    base: dict[str, object] = {
        "request_id": ROOT,
        "adapter_id": ROOT,
        "snapshot_root": ROOT,
        "tokens": 3,
        "contributors": (Account.create().address,),
        "weights": (5,),
    }
    with pytest.raises(ReceiptError, match="invalid usage receipt"):
        UsageReceipt(**{**base, **fields})
