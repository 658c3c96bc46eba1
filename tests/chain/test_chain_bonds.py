"""Data bonds on both backends: a datanet's policy, a contributor's bond, a validator's flag
backed by the hash of its signed off-chain review, the penalty, unbonding."""

from __future__ import annotations

from pathlib import Path

import pytest

import openledger.data as data
from openledger.attribution import Ledger, UsageReceipt
from openledger.chain import Account, Chain, ContractRevertError, FlagKind, Protocol
from openledger.crypto import to_hex, typed_data_digest
from openledger.data.signing import review_message
from openledger.exceptions import AccessDeniedError

OPEN = 10**18
DAY = 86_400


def test_a_flagged_contributors_bond_is_slashed_by_the_reviewed_record(
    chain: Chain, protocol: Protocol, tmp_path: Path
) -> None:
    owner, curator, contributor = (
        chain.dev_accounts[0],
        chain.dev_accounts[1],
        chain.dev_accounts[2],
    )
    bonds = protocol.require_bonds()
    registered = protocol.datanets.register_datanet("medqa", sender=owner)
    datanet = registered.event("DatanetRegistered")["datanetId"]
    protocol.datanets.set_curator(datanet, curator.address, sender=owner)
    bonds.set_policy(datanet, 100 * OPEN, 2_000, 3 * DAY, sender=owner)
    protocol.token.transfer(contributor.address, 500 * OPEN)
    assert not bonds.is_bonded(datanet, contributor.address)
    bonds.approve_and_bond(datanet, 100 * OPEN, sender=contributor)
    assert bonds.is_bonded(datanet, contributor.address)

    # Off chain: the contribution, and the curator's signed review rejecting it.
    folder, schema = tmp_path / "medqa", data.InstructionRecord
    store = data.Datanet.create(folder, name="medqa", schema=schema, owner=owner)
    store.add_validator(curator, owner=owner)
    row = {"instruction": "What is 2 + 2?", "response": "5"}
    record = store.contribute([row], contributor=contributor)[0].record_hash
    reason = "malicious: a wrong answer planted on purpose"
    store.review(record, accept=False, reason=reason, validator=curator)
    review = store.reviews(record)[-1]
    review_hash = to_hex(typed_data_digest(review_message(store.id, record, False, reason)))
    assert (review.validator, review.accept) == (curator.address, False)

    treasury = bonds.treasury()
    before = protocol.token.balance_of(treasury)
    receipt = bonds.flag(
        datanet, record, contributor.address, FlagKind.MALICIOUS, review_hash, sender=curator
    )
    assert receipt.event("RecordFlagged")["penalty"] == 20 * OPEN  # 20% of the bond
    flag = bonds.get_flag(datanet, record)
    assert flag is not None
    assert (flag.review_hash, flag.kind, flag.validator) == (
        review_hash,
        FlagKind.MALICIOUS,
        curator.address,
    )
    assert protocol.token.balance_of(treasury) == before + 20 * OPEN
    assert bonds.bond_of(datanet, contributor.address).bonded == 80 * OPEN
    assert not bonds.is_bonded(datanet, contributor.address)
    assert bonds.penalties(datanet) == {contributor.address: 20 * OPEN}
    with pytest.raises(ContractRevertError) as twice:
        bonds.flag(datanet, record, contributor.address, FlagKind.DUPLICATE, review_hash)
    assert twice.value.error_name == "AlreadyFlagged"


def test_only_validators_flag_and_unbonding_waits_for_the_delay(
    chain: Chain, protocol: Protocol
) -> None:
    owner, contributor, stranger = chain.dev_accounts[0], chain.dev_accounts[2], Account.create()
    bonds = protocol.require_bonds()
    datanet = protocol.datanets.register_datanet("law").event("DatanetRegistered")["datanetId"]
    with pytest.raises(ContractRevertError) as too_high:
        bonds.set_policy(datanet, 50 * OPEN, bonds.max_slash_bps() + 1, DAY, sender=owner)
    assert too_high.value.error_name == "SlashRateTooHigh"
    bonds.set_policy(datanet, 50 * OPEN, 1_000, DAY, sender=owner)
    protocol.token.transfer(contributor.address, 50 * OPEN)
    bonds.approve_and_bond(datanet, 50 * OPEN, sender=contributor)
    chain.fund(stranger.address, 10**17)
    record, review = "0x" + "11" * 32, "0x" + "22" * 32
    with pytest.raises(ContractRevertError) as outsider:
        bonds.flag(
            datanet, record, contributor.address, FlagKind.DUPLICATE, review, sender=stranger
        )
    assert outsider.value.error_name == "NotValidator"
    bonds.begin_unbonding(datanet, 50 * OPEN, sender=contributor)
    with pytest.raises(ContractRevertError, match="StillUnbonding"):
        bonds.withdraw(datanet, sender=contributor)
    bonds.flag(datanet, record, contributor.address, FlagKind.DUPLICATE, review, sender=owner)
    chain.increase_time(DAY + 60)
    assert bonds.withdraw(datanet, sender=contributor).event("Withdrawn")["amount"] == 45 * OPEN
    assert bonds.total_bonded() == 0
    assert protocol.token.balance_of(contributor.address) == 45 * OPEN


def test_an_epochs_payouts_show_the_bond_penalties_slashed_in_its_window(
    chain: Chain, protocol: Protocol, tmp_path: Path
) -> None:
    owner, good, flagged = chain.dev_accounts[0], chain.dev_accounts[3], chain.dev_accounts[4]
    bonds = protocol.require_bonds()
    datanet = protocol.datanets.register_datanet("recipes").event("DatanetRegistered")["datanetId"]
    elsewhere = protocol.datanets.register_datanet("poems").event("DatanetRegistered")["datanetId"]
    root, other_root = "0x" + "aa" * 32, "0x" + "bb" * 32
    protocol.datanets.publish_snapshot(datanet, root, 2, sender=owner)
    protocol.datanets.publish_snapshot(elsewhere, other_root, 1, sender=owner)
    for net in (datanet, elsewhere):
        bonds.set_policy(net, 100 * OPEN, 1_500, DAY, sender=owner)
    for account in (good, flagged):
        protocol.token.transfer(account.address, 200 * OPEN)
        bonds.approve_and_bond(datanet, 100 * OPEN, sender=account)
    bonds.approve_and_bond(elsewhere, 100 * OPEN, sender=good)

    # A contribution gate: only bonded contributors may add records to the off-chain datanet.
    gate = bonds.contribution_gate(datanet)
    assert gate(good.address) is None
    stranger = Account.create()
    refusal = gate(stranger.address)
    assert refusal is not None
    assert "0 wei of bond" in refusal
    assert str(100 * OPEN) in refusal
    store = data.Datanet.create(
        tmp_path / "recipes", name="recipes", schema=data.TextRecord, owner=owner
    )
    store.contribution_gate = gate
    store.contribute([{"text": "Knead the dough for ten minutes."}], contributor=good)
    with pytest.raises(AccessDeniedError, match=r"refuses contributions .* 0 wei of bond"):
        store.contribute([{"text": "Bake at 220 degrees."}], contributor=stranger)
    assert len(store) == 1  # the refused contribution stored nothing

    start = chain.block_number()
    record, review = "0x" + "11" * 32, "0x" + "22" * 32
    bonds.flag(datanet, record, flagged.address, FlagKind.DUPLICATE, review, sender=owner)
    # A flag in a datanet the epoch does not credit is not this epoch's business.
    bonds.flag(elsewhere, "0x" + "33" * 32, good.address, FlagKind.MALICIOUS, review)

    operator = chain.dev_accounts[0]
    ledger = Ledger(protocol, [operator.address], window_start=start)
    usage = UsageReceipt(
        request_id="0x" + "01" * 32,
        adapter_id="0x" + "02" * 32,
        snapshot_root=root,
        tokens=10,
        contributors=(good.address, flagged.address),
        weights=(3, 1),
    )
    ledger.add([ledger.sign(usage, operator)])
    epoch = ledger.close_epoch(1_000)
    penalty = 100 * OPEN * 1_500 // 10_000
    assert epoch.split.bond_penalties == {flagged.address: penalty}
    assert epoch.amount_of(good.address) == 750
    assert epoch.amount_of(flagged.address) == 250  # reported, not charged a second time
    page = epoch._repr_html_()
    assert "bond slashed" in page
    assert str(penalty) in page

    # The next epoch's window starts after the previous one: the old flag is not repeated.
    ledger.add([ledger.sign(usage.model_copy(update={"request_id": "0x" + "03" * 32}), operator)])
    assert ledger.close_epoch(1_000).split.bond_penalties == {}
