"""Reward epochs on both backends: funding, claims, sweeping and every refusal."""

from __future__ import annotations

import pytest

from openledger.chain import (
    MINTER_ROLE,
    SETTLER_ROLE,
    Account,
    Chain,
    ContractRevertError,
    Protocol,
    RewardTree,
)

DAY = 86_400


def _tree(accounts: list[Account], base: int = 10**18) -> RewardTree:
    return RewardTree({a.address: base + i for i, a in enumerate(accounts)})


def _state(protocol: Protocol, accounts: list[Account]) -> tuple[object, ...]:
    token = protocol.token
    balances = tuple(token.balance_of(a.address) for a in accounts)
    return balances, token.balance_of(protocol.rewards.address)


def test_claims_pay_exactly_and_second_claim_is_refused(chain: Chain, protocol: Protocol) -> None:
    users = [Account.create() for _ in range(5)]
    tree = _tree(users)
    protocol.rewards.post_reward_tree(1, tree, chain.block_timestamp() + DAY)
    assert protocol.token.balance_of(protocol.rewards.address) == tree.total
    claimer = users[0]
    chain.fund(claimer.address, 10**17)
    protocol.rewards.claim_from_tree(1, tree, claimer)  # the account claims for itself
    for user in users[1:]:
        protocol.rewards.claim_from_tree(1, tree, user.address)  # relayed by the settler
    for user in users:
        assert protocol.token.balance_of(user.address) == tree.amount_of(user.address)
        assert protocol.rewards.is_claimed(1, user.address)
    with pytest.raises(ContractRevertError) as info:
        protocol.rewards.claim_from_tree(1, tree, claimer)
    assert info.value.error_name == "AlreadyClaimed"
    assert info.value.error_args == {"epochId": 1, "account": claimer.address}
    assert protocol.token.balance_of(protocol.rewards.address) == 0


def test_wrong_proof_is_refused_and_changes_nothing(chain: Chain, protocol: Protocol) -> None:
    users = [Account.create() for _ in range(4)]
    tree = _tree(users)
    protocol.rewards.post_reward_tree(1, tree, chain.block_timestamp() + DAY)
    before, epoch = _state(protocol, users), protocol.rewards.get_epoch(1)
    victim, thief = users[0].address, users[1].address
    with pytest.raises(ContractRevertError) as info:
        protocol.rewards.claim_for(1, thief, tree.amount_of(victim), tree.proof(victim))
    assert info.value.error_name == "InvalidProof"
    with pytest.raises(ContractRevertError, match="InvalidProof"):
        protocol.rewards.claim_for(1, victim, tree.amount_of(victim) + 1, tree.proof(victim))
    assert _state(protocol, users) == before
    assert protocol.rewards.get_epoch(1) == epoch
    assert not protocol.rewards.is_claimed(1, victim)


def test_unauthorised_settler_is_refused(chain: Chain, protocol: Protocol) -> None:
    outsider = chain.dev_accounts[5]
    tree = _tree([Account.create()])
    protocol.token.transfer(outsider.address, tree.total)
    protocol.token.approve(protocol.rewards.address, tree.total, sender=outsider)
    with pytest.raises(ContractRevertError) as info:
        protocol.rewards.post_epoch(
            1, tree.root, tree.total, chain.block_timestamp() + DAY, sender=outsider
        )
    assert info.value.error_name == "AccessControlUnauthorizedAccount"
    assert info.value.error_args["account"] == outsider.address
    assert protocol.token.balance_of(outsider.address) == tree.total
    with pytest.raises(ContractRevertError, match="UnknownEpoch"):
        protocol.rewards.get_epoch(1)
    protocol.rewards.grant_role(SETTLER_ROLE, outsider.address)
    assert protocol.rewards.has_role(SETTLER_ROLE, outsider.address)


def test_underfunded_epoch_is_refused_and_changes_nothing(chain: Chain, protocol: Protocol) -> None:
    settler = chain.dev_accounts[6]
    protocol.rewards.grant_role(SETTLER_ROLE, settler.address)
    tree = _tree([Account.create(), Account.create()])
    protocol.token.transfer(settler.address, tree.total - 1)
    protocol.token.approve(protocol.rewards.address, tree.total, sender=settler)
    with pytest.raises(ContractRevertError) as info:
        protocol.rewards.post_epoch(
            9, tree.root, tree.total, chain.block_timestamp() + DAY, sender=settler
        )
    assert info.value.error_name == "InsufficientFunding"
    assert info.value.error_args == {
        "epochId": 9,
        "required": tree.total,
        "available": tree.total - 1,
    }
    assert protocol.token.balance_of(settler.address) == tree.total - 1
    assert protocol.token.balance_of(protocol.rewards.address) == 0


def test_unknown_epoch_is_refused(protocol: Protocol) -> None:
    user = Account.create()
    tree = _tree([user])
    with pytest.raises(ContractRevertError) as info:
        protocol.rewards.claim_from_tree(42, tree, user.address)
    assert (info.value.error_name, info.value.error_args) == ("UnknownEpoch", {"epochId": 42})
    assert protocol.token.balance_of(user.address) == 0


def test_sweep_after_deadline_returns_only_the_unclaimed(chain: Chain, protocol: Protocol) -> None:
    users = [Account.create() for _ in range(3)]
    tree = _tree(users)
    sink = Account.create().address
    protocol.rewards.set_treasury(sink)
    protocol.rewards.post_reward_tree(1, tree, chain.block_timestamp() + DAY)
    protocol.rewards.claim_from_tree(1, tree, users[0].address)
    stranger = chain.dev_accounts[7]
    with pytest.raises(ContractRevertError, match="EpochStillOpen"):
        protocol.rewards.sweep(1, sender=stranger)
    chain.increase_time(DAY + 1)
    with pytest.raises(ContractRevertError, match="ClaimWindowClosed"):
        protocol.rewards.claim_from_tree(1, tree, users[1].address)
    unclaimed = tree.total - tree.amount_of(users[0].address)
    receipt = protocol.rewards.sweep(1, sender=stranger)
    assert receipt.event("Swept")["amount"] == unclaimed
    assert receipt.event("Swept")["to"] == sink
    assert protocol.token.balance_of(sink) == unclaimed
    assert protocol.token.balance_of(protocol.rewards.address) == 0
    assert protocol.rewards.get_epoch(1).swept


def test_repeat_claimers_pay_less_gas(chain: Chain, protocol: Protocol) -> None:
    users = [Account.create() for _ in range(8)]
    first, second = _tree(users), _tree(users, base=5)
    deadline = chain.block_timestamp() + DAY
    protocol.rewards.post_reward_tree(1, first, deadline)
    protocol.rewards.post_reward_tree(2, second, deadline)
    fresh = protocol.rewards.claim_from_tree(1, first, users[0].address).gas_used
    repeat = protocol.rewards.claim_from_tree(2, second, users[0].address).gas_used
    # NOTE: the claimed bitmap slot, the token balance and the earned votes are already
    #       non-zero the second time; the votes' checkpoints still take new slots (~50k).
    assert repeat < fresh - 30_000
    assert repeat < 140_000


def test_posted_epoch_ids_come_from_the_logs(chain: Chain, protocol: Protocol) -> None:
    assert protocol.rewards.posted_epoch_ids() == []
    tree = _tree([Account.create()])
    deadline = chain.block_timestamp() + DAY
    for epoch_id in (3, 1, 7):
        protocol.rewards.post_reward_tree(epoch_id, tree, deadline)
    assert protocol.rewards.posted_epoch_ids() == [3, 1, 7]


def test_a_claim_window_below_the_minimum_is_refused(chain: Chain, protocol: Protocol) -> None:
    tree = _tree([Account.create()])
    assert protocol.rewards.min_claim_window() == 3600
    protocol.token.approve(protocol.rewards.address, tree.total)
    with pytest.raises(ContractRevertError) as info:
        protocol.rewards.post_epoch(1, tree.root, tree.total, chain.block_timestamp() + 60)
    assert info.value.error_name == "ClaimWindowTooShort"
    with pytest.raises(ContractRevertError, match="ClaimWindowOutOfRange"):
        protocol.rewards.set_min_claim_window(59)
    with pytest.raises(ContractRevertError, match="AccessControlUnauthorizedAccount"):
        protocol.rewards.set_treasury(chain.dev_accounts[4].address, sender=chain.dev_accounts[4])
    assert protocol.rewards.treasury() == protocol.require_governance().timelock.address


def test_the_token_is_capped_and_minted_by_role(chain: Chain, protocol: Protocol) -> None:
    outsider = chain.dev_accounts[4]
    room = protocol.token.cap() - protocol.token.total_supply()
    with pytest.raises(ContractRevertError) as info:
        protocol.token.mint(outsider.address, room + 1)
    assert info.value.error_name == "ERC20ExceededCap"
    with pytest.raises(ContractRevertError, match="AccessControlUnauthorizedAccount"):
        protocol.token.mint(outsider.address, 1, sender=outsider)
    protocol.token.grant_role(MINTER_ROLE, outsider.address)
    protocol.token.mint(outsider.address, 5, sender=outsider)
    assert protocol.token.balance_of(outsider.address) == 5
    assert protocol.token.default_admin() == chain.default_account.address
