"""Contribution-weighted governance: votes earned by claimed rewards, a governor, a timelock.

Votes come only from attribution rewards claimed through ``AttributionRewards`` (its
``ContributionVotes``); OPEN transfers move none. A proposal is a list of calls the
timelock (the treasury, and on governed deployments the admin of the protocol's
parameters) makes once the proposal passed and its delay ran out::

    gov = protocol.require_governance()
    grant = protocol.token.encode_call("transfer", grantee, 5 * 10**18)
    proposal = gov.propose([grant], "Fund the medqa evaluation", sender=alice)
    chain.increase_time(gov.voting_delay() + 1)
    gov.vote(proposal, Support.FOR, sender=alice)
    chain.increase_time(gov.voting_period())
    gov.queue(proposal)
    chain.increase_time(gov.timelock.min_delay())
    gov.execute(proposal)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openledger.chain.bindings import Call, ContractClient, Receipt
from openledger.chain.rewards import CHECKPOINT_GAS
from openledger.crypto import Account, keccak256, to_checksum_address
from openledger.exceptions import ConfigError
from openledger.types import Address, Wei

if TYPE_CHECKING:
    from openledger.chain.client import Chain

__all__ = [
    "CANCELLER_ROLE",
    "PROPOSER_ROLE",
    "ContributionVotesClient",
    "GovernanceClient",
    "GovernanceParams",
    "Proposal",
    "ProposalState",
    "Support",
    "TimelockClient",
]

PROPOSER_ROLE = keccak256(b"PROPOSER_ROLE")
"""``TimelockController.PROPOSER_ROLE``: schedules operations (the governor)."""

CANCELLER_ROLE = keccak256(b"CANCELLER_ROLE")
"""``TimelockController.CANCELLER_ROLE``: cancels scheduled operations (the governor)."""


@dataclass(frozen=True, slots=True)
class GovernanceParams:
    """Settings of a fresh ``OpenLedgerGovernor`` and its timelock (seconds: the clock is
    block time).

    Attributes:
        voting_delay: Between a proposal and the start of its vote.
        voting_period: How long the vote lasts.
        proposal_threshold: Votes (earned token wei) needed to propose.
        quorum_percent: Percent of all votes ever earned that must vote for or abstain.
        timelock_delay: Between queueing a passed proposal and executing it.
    """

    voting_delay: int = 86_400
    voting_period: int = 5 * 86_400
    proposal_threshold: int = 10**18
    quorum_percent: int = 4
    timelock_delay: int = 2 * 86_400

    def __post_init__(self) -> None:
        if not 0 <= self.quorum_percent <= 100:
            raise ConfigError(f"quorum_percent must be 0..100, got {self.quorum_percent}")
        if self.voting_period < 1 or self.voting_delay < 0 or self.timelock_delay < 0:
            raise ConfigError("voting_period must be >= 1 s; voting_delay, timelock_delay >= 0")

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        """Return ``(voting_delay, voting_period, proposal_threshold, quorum_percent,
        timelock_delay)``: the governor's constructor arguments, then the timelock's delay."""
        return (
            self.voting_delay,
            self.voting_period,
            self.proposal_threshold,
            self.quorum_percent,
            self.timelock_delay,
        )


class ProposalState(enum.IntEnum):
    """``IGovernor.ProposalState``."""

    PENDING = 0
    ACTIVE = 1
    CANCELED = 2
    DEFEATED = 3
    SUCCEEDED = 4
    QUEUED = 5
    EXPIRED = 6
    EXECUTED = 7


class Support(enum.IntEnum):
    """A vote (``GovernorCountingSimple``)."""

    AGAINST = 0
    FOR = 1
    ABSTAIN = 2


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal as created: what queueing and executing it need.

    Attributes:
        proposal_id: The governor's id of it.
        calls: What the timelock will call.
        description: Its text (its keccak256 is part of the id).
    """

    proposal_id: int
    calls: tuple[Call, ...]
    description: str

    @property
    def description_hash(self) -> bytes:
        """``keccak256(description)``, as the governor takes it."""
        return keccak256(self.description.encode("utf-8"))

    def as_abi_args(self) -> tuple[list[str], list[int], list[bytes], bytes]:
        """Return ``(targets, values, calldatas, descriptionHash)``."""
        return (
            [c.target for c in self.calls],
            [c.value for c in self.calls],
            [c.data for c in self.calls],
            self.description_hash,
        )


class ContributionVotesClient(ContractClient):
    """``ContributionVotes``: non-transferable votes earned by claimed rewards (IERC5805).

    Amounts are token wei earned; timepoints are Unix seconds (the clock is the block time).
    """

    contract_name = "ContributionVotes"

    def get_votes(self, account: str) -> Wei:
        """Return the votes ``account`` holds now (its own and those delegated to it)."""
        return Wei(int(self._call("getVotes", to_checksum_address(account))))

    def get_past_votes(self, account: str, timepoint: int) -> Wei:
        """Return the votes ``account`` held at ``timepoint`` (must be in the past)."""
        return Wei(int(self._call("getPastVotes", to_checksum_address(account), timepoint)))

    def get_past_total_supply(self, timepoint: int) -> Wei:
        """Return all votes earned up to ``timepoint`` (must be in the past)."""
        return Wei(int(self._call("getPastTotalSupply", timepoint)))

    def earned(self, account: str) -> Wei:
        """Return what ``account`` has earned by claims, wherever it delegated it."""
        return Wei(int(self._call("earned", to_checksum_address(account))))

    def total_earned(self) -> Wei:
        """Return all votes ever earned: the sum of claimed rewards."""
        return Wei(int(self._call("totalEarned")))

    def delegates(self, account: str) -> Address | None:
        """Return whom ``account`` delegates to (itself after its first earning), or None."""
        found = to_checksum_address(self._call("delegates", to_checksum_address(account)))
        return None if int(found, 16) == 0 else found

    def delegate(self, delegatee: str, *, sender: Account | None = None) -> Receipt:
        """Let ``delegatee`` vote with the sender's earned votes (never the zero address)."""
        who = to_checksum_address(delegatee)
        return self._transact("delegate", who, sender=sender, extra_gas=CHECKPOINT_GAS)

    def rewards(self) -> Address:
        """Return the rewards contract whose claims earn votes."""
        return to_checksum_address(self._call("rewards"))

    def clock(self) -> int:
        """Return the votes' clock (the latest block's timestamp)."""
        return int(self._call("clock"))


class TimelockClient(ContractClient):
    """``OpenLedgerTimelock``: executes passed proposals after a delay; holds the treasury."""

    contract_name = "OpenLedgerTimelock"

    def min_delay(self) -> int:
        """Return the seconds between queueing and executing an operation."""
        return int(self._call("getMinDelay"))

    def has_role(self, role: bytes, account: str) -> bool:
        """Return whether ``account`` holds ``role`` (e.g. :data:`PROPOSER_ROLE`); once set
        up, only the timelock itself (by proposal) grants or revokes roles."""
        return bool(self._call("hasRole", role, to_checksum_address(account)))


class GovernanceClient(ContractClient):
    """``OpenLedgerGovernor`` with its votes and timelock: propose, vote, queue, execute.

    Args:
        chain: The chain.
        address: The governor.
        votes: Client of its ``ContributionVotes``.
        timelock: Client of its timelock.
        sender: Default signer of transactions.
        from_block: Where to start reading proposal logs (the deployment block).
    """

    contract_name = "OpenLedgerGovernor"

    def __init__(
        self,
        chain: Chain,
        address: str,
        votes: ContributionVotesClient,
        timelock: TimelockClient,
        sender: Account | None = None,
        from_block: int = 0,
    ) -> None:
        super().__init__(chain, address, sender)
        self.votes = votes
        self.timelock = timelock
        self.from_block = from_block

    def propose(
        self, calls: Sequence[Call], description: str, *, sender: Account | None = None
    ) -> Proposal:
        """Propose that the timelock makes ``calls``; needs :meth:`proposal_threshold` votes.

        Returns:
            The proposal, to pass to :meth:`vote`, :meth:`queue` and :meth:`execute`.
        """
        if not calls:
            raise ConfigError("a proposal needs at least one call")
        targets = [c.target for c in calls]
        values = [c.value for c in calls]
        data = [c.data for c in calls]
        receipt = self._transact("propose", targets, values, data, description, sender=sender)
        proposal_id = int(receipt.event("ProposalCreated")["proposalId"])
        return Proposal(proposal_id, tuple(calls), description)

    def vote(
        self,
        proposal: Proposal | int,
        support: Support,
        *,
        reason: str = "",
        sender: Account | None = None,
    ) -> Receipt:
        """Vote with the sender's votes at the proposal's snapshot."""
        proposal_id = _id(proposal)
        if reason:
            return self._transact(
                "castVoteWithReason", proposal_id, int(support), reason, sender=sender
            )
        return self._transact("castVote", proposal_id, int(support), sender=sender)

    def queue(self, proposal: Proposal | int, *, sender: Account | None = None) -> Receipt:
        """Queue a passed proposal in the timelock (anyone)."""
        return self._transact("queue", *self._full(proposal).as_abi_args(), sender=sender)

    def execute(self, proposal: Proposal | int, *, sender: Account | None = None) -> Receipt:
        """Execute a queued proposal once the timelock's delay is over (anyone)."""
        return self._transact("execute", *self._full(proposal).as_abi_args(), sender=sender)

    def state(self, proposal: Proposal | int) -> ProposalState:
        """Return where the proposal stands."""
        return ProposalState(int(self._call("state", _id(proposal))))

    def proposal(self, proposal_id: int) -> Proposal:
        """Return a proposal from its ``ProposalCreated`` log (since :attr:`from_block`).

        Raises:
            LookupError: If no such proposal was created.
        """
        for args in self._logs("ProposalCreated", self.from_block):
            if int(args["proposalId"]) == proposal_id:
                columns = zip(args["targets"], args["values"], args["calldatas"], strict=True)
                calls = tuple(Call(to_checksum_address(t), _bytes(d), v) for t, v, d in columns)
                return Proposal(proposal_id, calls, str(args["description"]))
        raise LookupError(f"no proposal {proposal_id} since block {self.from_block}")

    def proposal_votes(self, proposal: Proposal | int) -> tuple[Wei, Wei, Wei]:
        """Return ``(against, for, abstain)`` votes cast so far."""
        against, yes, abstain = self._call("proposalVotes", _id(proposal))
        return Wei(against), Wei(yes), Wei(abstain)

    def has_voted(self, proposal: Proposal | int, account: str) -> bool:
        """Return whether ``account`` has voted on the proposal."""
        return bool(self._call("hasVoted", _id(proposal), to_checksum_address(account)))

    def proposal_snapshot(self, proposal: Proposal | int) -> int:
        """Return the timepoint whose votes count (voting starts right after it)."""
        return int(self._call("proposalSnapshot", _id(proposal)))

    def proposal_deadline(self, proposal: Proposal | int) -> int:
        """Return the last timepoint of the vote."""
        return int(self._call("proposalDeadline", _id(proposal)))

    def proposal_eta(self, proposal: Proposal | int) -> int:
        """Return when a queued proposal may execute (0 if not queued)."""
        return int(self._call("proposalEta", _id(proposal)))

    def quorum(self, timepoint: int) -> Wei:
        """Return the votes for and abstaining needed at ``timepoint`` (in the past)."""
        return Wei(int(self._call("quorum", timepoint)))

    def voting_delay(self) -> int:
        """Return the seconds between a proposal and the start of its vote."""
        return int(self._call("votingDelay"))

    def voting_period(self) -> int:
        """Return the seconds a vote lasts."""
        return int(self._call("votingPeriod"))

    def proposal_threshold(self) -> Wei:
        """Return the votes needed to propose."""
        return Wei(int(self._call("proposalThreshold")))

    def get_votes(self, account: str) -> Wei:
        """Return ``account``'s current voting power (see :class:`ContributionVotesClient`)."""
        return self.votes.get_votes(account)

    def get_past_votes(self, account: str, timepoint: int) -> Wei:
        """Return ``account``'s voting power at a past ``timepoint``."""
        return self.votes.get_past_votes(account, timepoint)

    def _full(self, proposal: Proposal | int) -> Proposal:
        return proposal if isinstance(proposal, Proposal) else self.proposal(proposal)


def _id(proposal: Proposal | int) -> int:
    return proposal.proposal_id if isinstance(proposal, Proposal) else int(proposal)


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)
