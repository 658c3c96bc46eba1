"""Agent staking and slashing on both backends: stake, report, challenge, slash, unbond."""

from __future__ import annotations

import pytest

from openledger.chain import (
    AgentParams,
    Chain,
    ContractRevertError,
    DisputeStatus,
    FailedServiceReport,
    Protocol,
)
from openledger.crypto import Account

OPEN = 10**18
MODEL = "0x" + "a1" * 32


@pytest.fixture
def parties(chain: Chain, protocol: Protocol) -> tuple[Account, Account]:
    """An agent and a served user, each holding 1,000 OPEN."""
    agent, user = chain.dev_accounts[3], chain.dev_accounts[4]
    for account in (agent, user):
        protocol.token.transfer(account.address, 1_000 * OPEN)
    return agent, user


def _report(chain: Chain, agent: Account, request: str) -> FailedServiceReport:
    return FailedServiceReport(
        agent=agent.address,
        model_id=MODEL,
        request_hash=request,
        evidence_hash="0x" + "e0" * 32,
        deadline=chain.block_timestamp() + 3600,
    )


def _file(protocol: Protocol, chain: Chain, user: Account, report: FailedServiceReport) -> int:
    agents = protocol.require_agents()
    protocol.token.approve(agents.address, agents.params().report_bond, sender=user)
    signature = agents.sign_report(user, report)
    return agents.file_report(report, user.address, signature, sender=chain.dev_accounts[5])


def test_an_agent_stakes_is_reported_challenged_and_slashed(
    chain: Chain, protocol: Protocol, parties: tuple[Account, Account]
) -> None:
    agent, user = parties
    agents, treasury = protocol.require_agents(), protocol.rewards.treasury()
    agents.stake_and_register(200 * OPEN, [MODEL], sender=agent)
    assert agents.is_active(agent.address)
    assert agents.get_agent(agent.address).model_ids == (MODEL,)
    dispute = _file(protocol, chain, user, _report(chain, agent, "0x" + "01" * 32))
    assert agents.get_dispute(dispute).status is DisputeStatus.OPEN
    agents.challenge(dispute, "0x" + "c0" * 32, sender=agent)
    with pytest.raises(ContractRevertError) as early:
        agents.execute_slash(dispute)
    assert early.value.error_name == "DisputeNotOpen"
    before = protocol.token.balance_of(treasury)
    receipt = agents.resolve(dispute, True)  # the deployer holds SLASHER_ROLE
    slashed = receipt.event("Slashed")
    # 10% of 200 OPEN; 20% of it to the reporter (with the 10 OPEN bond back), the rest kept.
    assert (slashed["amount"], slashed["toReporter"], slashed["toTreasury"]) == (
        20 * OPEN,
        4 * OPEN,
        16 * OPEN,
    )
    assert protocol.token.balance_of(user.address) == 1_004 * OPEN
    assert protocol.token.balance_of(treasury) == before + 16 * OPEN
    info = agents.get_agent(agent.address)
    assert (info.stake, info.open_disputes) == (180 * OPEN, 0)
    assert agents.get_dispute(dispute).status is DisputeStatus.UPHELD
    assert agents.total_bonded() == 180 * OPEN


def test_an_unchallenged_report_is_slashed_by_anyone_after_the_window(
    chain: Chain, protocol: Protocol, parties: tuple[Account, Account]
) -> None:
    agent, user = parties
    agents = protocol.require_agents()
    agents.stake_and_register(100 * OPEN, sender=agent)
    dispute = _file(protocol, chain, user, _report(chain, agent, "0x" + "02" * 32))
    with pytest.raises(ContractRevertError) as early:
        agents.execute_slash(dispute, sender=chain.dev_accounts[6])
    assert early.value.error_name == "ChallengeWindowOpen"
    chain.increase_time(agents.params().challenge_window + 60)
    with pytest.raises(ContractRevertError, match="ChallengeWindowClosed"):
        agents.challenge(dispute, "0x" + "c0" * 32, sender=agent)
    agents.execute_slash(dispute, sender=chain.dev_accounts[6])
    assert agents.get_agent(agent.address).stake == 90 * OPEN
    assert not agents.is_active(agent.address)  # below the 100 OPEN minimum now


def test_stake_rules_and_unbonding(
    chain: Chain, protocol: Protocol, parties: tuple[Account, Account]
) -> None:
    agent, user = parties
    agents = protocol.require_agents()
    with pytest.raises(ContractRevertError) as low:
        agents.stake_and_register(99 * OPEN, sender=agent)
    assert (low.value.error_name, low.value.error_args["minStake"]) == (
        "StakeBelowMinimum",
        100 * OPEN,
    )
    agents.stake_and_register(150 * OPEN, sender=agent)
    agents.begin_unbonding(150 * OPEN, sender=agent)
    dispute = _file(protocol, chain, user, _report(chain, agent, "0x" + "03" * 32))
    chain.increase_time(agents.params().unbonding_period + 60)
    with pytest.raises(ContractRevertError, match="DisputesOpen"):
        agents.withdraw(sender=agent)
    agents.execute_slash(dispute)  # unbonding stake is still slashable
    receipt = agents.withdraw(sender=agent)
    assert receipt.event("Withdrawn")["amount"] == 135 * OPEN
    assert agents.total_bonded() == 0
    with pytest.raises(ContractRevertError, match="InvalidParams"):
        agents.set_params(AgentParams(slash_bps=10_001))
