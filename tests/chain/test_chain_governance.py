"""Contribution-weighted governance on both backends: votes earned by claims, a treasury
grant that passes and runs after the timelock, parameters changed only by proposal."""

from __future__ import annotations

import pytest

from openledger.chain import (
    Account,
    Chain,
    ContractRevertError,
    Proposal,
    ProposalState,
    Protocol,
    RewardTree,
    Support,
)

OPEN = 10**18
MARGIN = 60  # seconds past each boundary, so the pre-flight call sees the same state


@pytest.fixture
def voters(chain: Chain, protocol: Protocol) -> tuple[Account, Account, Account]:
    """Alice, Bob and Carol, paid 60, 30 and 10 OPEN of attribution rewards and claimed."""
    alice, bob, carol = chain.dev_accounts[1:4]
    _pay(chain, protocol, 1, {alice: 60 * OPEN, bob: 30 * OPEN, carol: 10 * OPEN})
    chain.increase_time(MARGIN)
    return alice, bob, carol


def _pay(chain: Chain, protocol: Protocol, epoch: int, payouts: dict[Account, int]) -> None:
    tree = RewardTree({a.address: amount for a, amount in payouts.items()})
    protocol.rewards.post_reward_tree(epoch, tree, chain.block_timestamp() + 7 * 86_400)
    for account in payouts:
        protocol.rewards.claim_from_tree(epoch, tree, account.address)


def _grant(protocol: Protocol, proposer: Account, grantee: str, amount: int) -> Proposal:
    gov = protocol.require_governance()
    call = protocol.token.encode_call("transfer", grantee, amount)
    return gov.propose([call], f"Grant {amount} to {grantee}", sender=proposer)


def test_claimed_rewards_are_votes_and_open_transfers_move_none(
    protocol: Protocol, voters: tuple[Account, Account, Account]
) -> None:
    alice, bob, _ = voters
    gov = protocol.require_governance()
    assert gov.get_votes(alice.address) == 60 * OPEN
    assert gov.votes.delegates(alice.address) == alice.address  # on her first earning
    assert gov.votes.total_earned() == 100 * OPEN
    buyer = Account.create().address
    protocol.token.transfer(buyer, 60 * OPEN, sender=alice)
    assert protocol.token.balance_of(alice.address) == 0
    assert gov.get_votes(alice.address) == 60 * OPEN
    assert gov.get_votes(buyer) == 0
    gov.votes.delegate(bob.address, sender=alice)
    assert (gov.get_votes(bob.address), gov.get_votes(alice.address)) == (90 * OPEN, 0)
    assert gov.votes.earned(alice.address) == 60 * OPEN


def test_a_treasury_grant_passes_by_contribution_and_runs_after_the_timelock(
    chain: Chain, protocol: Protocol, voters: tuple[Account, Account, Account]
) -> None:
    alice, bob, carol = voters
    gov = protocol.require_governance()
    treasury = gov.timelock.address
    assert protocol.rewards.treasury() == treasury
    protocol.token.transfer(treasury, 1_000 * OPEN)
    grantee = Account.create().address
    proposal = _grant(protocol, alice, grantee, 5 * OPEN)
    assert gov.state(proposal) is ProposalState.PENDING
    whale = chain.dev_accounts[6]  # holds OPEN, earned nothing
    protocol.token.transfer(whale.address, 10_000 * OPEN)
    chain.increase_time(gov.voting_delay() + MARGIN)
    assert gov.state(proposal) is ProposalState.ACTIVE
    gov.vote(proposal, Support.FOR, sender=alice)
    gov.vote(proposal, Support.AGAINST, reason="not now", sender=bob)
    gov.vote(proposal, Support.FOR, sender=carol)
    gov.vote(proposal, Support.AGAINST, sender=whale)  # counts zero: OPEN is not votes
    assert gov.proposal_votes(proposal) == (30 * OPEN, 70 * OPEN, 0)
    snapshot = gov.proposal_snapshot(proposal)
    assert gov.get_past_votes(bob.address, snapshot) == 30 * OPEN
    chain.increase_time(gov.voting_period() + MARGIN)
    assert gov.state(proposal) is ProposalState.SUCCEEDED
    gov.queue(proposal.proposal_id)  # read back from its ProposalCreated log
    assert gov.state(proposal) is ProposalState.QUEUED
    with pytest.raises(ContractRevertError) as early:
        gov.execute(proposal)
    assert early.value.error_name == "TimelockUnexpectedOperationState"
    chain.increase_time(gov.timelock.min_delay() + MARGIN)
    gov.execute(proposal, sender=chain.dev_accounts[7])  # anyone executes
    assert gov.state(proposal) is ProposalState.EXECUTED
    assert protocol.token.balance_of(grantee) == 5 * OPEN
    assert protocol.token.balance_of(treasury) == 995 * OPEN


def test_votes_earned_after_the_snapshot_do_not_count(
    chain: Chain, protocol: Protocol, voters: tuple[Account, Account, Account]
) -> None:
    alice, bob, _ = voters
    gov = protocol.require_governance()
    proposal = _grant(protocol, alice, Account.create().address, OPEN)
    chain.increase_time(gov.voting_delay() + MARGIN)
    _pay(chain, protocol, 2, {bob: 500 * OPEN})
    gov.vote(proposal, Support.AGAINST, sender=bob)
    gov.vote(proposal, Support.FOR, sender=alice)
    assert gov.get_votes(bob.address) == 530 * OPEN
    assert gov.proposal_votes(proposal) == (30 * OPEN, 60 * OPEN, 0)
    chain.increase_time(gov.voting_period() + MARGIN)
    assert gov.state(proposal) is ProposalState.SUCCEEDED


def test_proposing_needs_earned_votes(chain: Chain, protocol: Protocol) -> None:
    gov = protocol.require_governance()
    holder = chain.dev_accounts[5]
    protocol.token.transfer(holder.address, 1_000 * OPEN)
    with pytest.raises(ContractRevertError) as info:
        _grant(protocol, holder, holder.address, OPEN)
    assert info.value.error_name == "GovernorInsufficientProposerVotes"
    assert info.value.error_args["threshold"] == gov.proposal_threshold() == OPEN


def test_a_governed_deployment_changes_parameters_only_by_proposal(chain: Chain) -> None:
    protocol = chain.deploy_protocol(governed=True)
    gov, deployer = protocol.require_governance(), chain.default_account
    timelock = gov.timelock.address
    assert protocol.rewards.default_admin() == timelock
    assert protocol.require_agents().default_admin() == timelock
    assert protocol.require_bonds().default_admin() == timelock
    assert protocol.token.default_admin() == timelock
    with pytest.raises(ContractRevertError, match="AccessControlUnauthorizedAccount"):
        protocol.rewards.set_min_claim_window(3 * 86_400, sender=deployer)
    alice = chain.dev_accounts[1]
    _pay(chain, protocol, 1, {alice: 10 * OPEN})  # the deployer still settles epochs
    chain.increase_time(MARGIN)
    call = protocol.rewards.encode_call("setMinClaimWindow", 3 * 86_400)
    proposal = gov.propose([call], "Three-day claim windows", sender=alice)
    chain.increase_time(gov.voting_delay() + MARGIN)
    gov.vote(proposal, Support.FOR, sender=alice)
    chain.increase_time(gov.voting_period() + MARGIN)
    gov.queue(proposal)
    chain.increase_time(gov.timelock.min_delay() + MARGIN)
    gov.execute(proposal)
    assert protocol.rewards.min_claim_window() == 3 * 86_400


def test_only_the_governor_proposes_to_the_timelock(chain: Chain, protocol: Protocol) -> None:
    from openledger.chain.governance import CANCELLER_ROLE, PROPOSER_ROLE

    gov, deployer = protocol.require_governance(), chain.default_account.address
    assert gov.timelock.has_role(PROPOSER_ROLE, gov.address)
    assert gov.timelock.has_role(CANCELLER_ROLE, gov.address)
    assert not gov.timelock.has_role(PROPOSER_ROLE, deployer)
    assert not gov.timelock.has_role(bytes(32), deployer)  # the setup admin renounced
    assert gov.votes.rewards() == protocol.rewards.address
