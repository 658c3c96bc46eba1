"""Typed client of ``AgentRegistry``: agent stakes, failed-service reports and slashing.

The dispute flow, as calls::

    agents.stake_and_register(amount, [model_id], sender=agent)     # approve + register
    report = FailedServiceReport(agent=..., model_id=..., request_hash=..., evidence_hash=...,
                                 deadline=...)
    signature = agents.sign_report(user, report)                    # the served user signs
    dispute = agents.file_report(report, user.address, signature)   # anyone relays; bond pulled
    agents.challenge(dispute, counter_evidence, sender=agent)       # within the window
    agents.resolve(dispute, upheld=True, sender=governance)         # or execute_slash() after
                                                                    # an unchallenged window
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from openledger.chain.bindings import Receipt, plain
from openledger.chain.rewards import TokenSpender
from openledger.crypto import (
    Account,
    eip712_domain,
    from_hex,
    keccak256,
    to_checksum_address,
    typed_data,
)
from openledger.types import Address, Hash32, Wei

__all__ = [
    "SLASHER_ROLE",
    "AgentInfo",
    "AgentParams",
    "AgentRegistryClient",
    "DisputeInfo",
    "DisputeStatus",
    "FailedServiceReport",
]

SLASHER_ROLE = keccak256(b"SLASHER_ROLE")
"""``AgentRegistry.SLASHER_ROLE``: decides challenged disputes and slashes directly."""

_REPORT_TYPES = {
    "FailedServiceReport": [
        ("agent", "address"),
        ("modelId", "bytes32"),
        ("requestHash", "bytes32"),
        ("evidenceHash", "bytes32"),
        ("nonce", "uint256"),
        ("deadline", "uint256"),
    ]
}


@dataclass(frozen=True, slots=True)
class AgentParams:
    """``AgentRegistry.Params``: what staking costs and what a slash takes.

    Attributes:
        min_stake: Smallest stake of an active agent, in token wei.
        report_bond: Bond a reporter puts up per report (returned if upheld).
        unbonding_period: Seconds between ``beginUnbonding`` and ``withdraw``.
        challenge_window: Seconds an agent has to challenge a report.
        slash_bps: Share of the agent's bonded stake an upheld report takes (basis points).
        reporter_share_bps: Share of a slash paid to the reporter; the rest goes to the
            treasury (basis points).
    """

    min_stake: int = 100 * 10**18
    report_bond: int = 10 * 10**18
    unbonding_period: int = 7 * 86_400
    challenge_window: int = 2 * 86_400
    slash_bps: int = 1_000
    reporter_share_bps: int = 2_000

    def as_abi_tuple(self) -> tuple[int, int, int, int, int, int]:
        """Return the values in the order of the Solidity struct."""
        return (
            self.min_stake,
            self.report_bond,
            self.unbonding_period,
            self.challenge_window,
            self.slash_bps,
            self.reporter_share_bps,
        )


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """A registered agent as stored on chain.

    Attributes:
        stake: Staked tokens (counts towards the minimum).
        unbonding: Tokens on their way out (still slashable).
        unbonding_ends: When ``unbonding`` may be withdrawn (Unix time).
        open_disputes: Undecided disputes against the agent (withdrawal waits for none).
        model_ids: The model ids it declared it serves.
    """

    stake: Wei
    unbonding: Wei
    unbonding_ends: int
    open_disputes: int
    model_ids: tuple[Hash32, ...]


class DisputeStatus(enum.IntEnum):
    """``AgentRegistry.DisputeStatus``."""

    NONE = 0
    OPEN = 1
    CHALLENGED = 2
    UPHELD = 3
    REJECTED = 4


@dataclass(frozen=True, slots=True)
class DisputeInfo:
    """A dispute as stored on chain.

    Attributes:
        agent: The reported agent.
        reporter: The user who signed the report.
        status: Open, challenged, upheld or rejected.
        challenge_ends: Last second the agent may challenge (Unix time).
        model_id: The model the request was for.
        request_hash: The failed request's hash.
        evidence_hash: The reporter's evidence hash.
        counter_evidence_hash: The agent's evidence hash (zero until challenged).
        bond: The reporter's bond held until the decision.
    """

    agent: Address
    reporter: Address
    status: DisputeStatus
    challenge_ends: int
    model_id: Hash32
    request_hash: Hash32
    evidence_hash: Hash32
    counter_evidence_hash: Hash32
    bond: Wei


@dataclass(frozen=True, slots=True)
class FailedServiceReport:
    """What a served user signs when an agent failed them.

    Attributes:
        agent: The agent that failed.
        model_id: The model it was asked to serve.
        request_hash: Hash of the request (e.g. a metering receipt's id).
        evidence_hash: Hash of the evidence kept off chain (logs, responses).
        deadline: Unix time after which the signature is refused.
    """

    agent: str
    model_id: str
    request_hash: str
    evidence_hash: str
    deadline: int

    def as_abi_tuple(self) -> tuple[str, bytes, bytes, bytes, int]:
        """Return the values in the order of the Solidity struct."""
        return (
            to_checksum_address(self.agent),
            from_hex(self.model_id, size=32, what="model_id"),
            from_hex(self.request_hash, size=32, what="request_hash"),
            from_hex(self.evidence_hash, size=32, what="evidence_hash"),
            self.deadline,
        )


class AgentRegistryClient(TokenSpender):
    """``AgentRegistry``: staked agents, failed-service disputes and slashing.

    Args:
        chain: The chain.
        address: The registry.
        token: Client of the staking token (for approvals).
        sender: Default signer of transactions.
    """

    contract_name = "AgentRegistry"

    def register(
        self, amount: int, model_ids: Sequence[str] = (), *, sender: Account | None = None
    ) -> Receipt:
        """Register the sender with ``amount`` staked (approve first), serving ``model_ids``."""
        return self._transact("register", amount, _ids(model_ids), sender=sender)

    def stake_and_register(
        self, amount: int, model_ids: Sequence[str] = (), *, sender: Account | None = None
    ) -> Receipt:
        """Approve ``amount`` if needed, then :meth:`register`."""
        return self.register(amount, model_ids, sender=self._approved(amount, sender))

    def add_stake(self, amount: int, *, sender: Account | None = None) -> Receipt:
        """Add ``amount`` to the sender's stake (approve first)."""
        return self._transact("addStake", amount, sender=sender)

    def declare_models(self, model_ids: Sequence[str], *, sender: Account | None = None) -> Receipt:
        """Replace the list of models the sender serves."""
        return self._transact("declareModels", _ids(model_ids), sender=sender)

    def begin_unbonding(self, amount: int, *, sender: Account | None = None) -> Receipt:
        """Move ``amount`` of the stake to unbonding (what stays is 0 or >= the minimum)."""
        return self._transact("beginUnbonding", amount, sender=sender)

    def withdraw(self, *, sender: Account | None = None) -> Receipt:
        """Withdraw unbonded stake after the period, with no dispute open."""
        return self._transact("withdraw", sender=sender)

    def sign_report(self, reporter: Account, report: FailedServiceReport) -> bytes:
        """Sign ``report`` as ``reporter`` (EIP-712, the reporter's current on-chain nonce).

        Sign right before relaying: each report of a reporter uses the next nonce.
        """
        domain = eip712_domain(
            "OpenLedger AgentRegistry",
            "1",
            chain_id=self.chain.chain_id,
            verifying_contract=self.address,
        )
        agent, model, request, evidence, deadline = report.as_abi_tuple()
        message = {
            "agent": agent,
            "modelId": model,
            "requestHash": request,
            "evidenceHash": evidence,
            "nonce": self.nonces(reporter.address),
            "deadline": deadline,
        }
        return reporter.sign_typed_data(
            typed_data(domain, _REPORT_TYPES, "FailedServiceReport", message)
        )

    def report(
        self,
        report: FailedServiceReport,
        reporter: str,
        signature: bytes | str,
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Relay a signed report (anyone may); the reporter's bond is pulled.

        The dispute id is in the receipt's ``Reported`` event (``disputeId``).
        """
        args = (
            report.as_abi_tuple(),
            to_checksum_address(reporter),
            from_hex(signature, size=65, what="signature"),
        )
        return self._transact("report", *args, sender=sender)

    def file_report(
        self,
        report: FailedServiceReport,
        reporter: str,
        signature: bytes | str,
        *,
        sender: Account | None = None,
    ) -> int:
        """Relay a signed report like :meth:`report` and return the new dispute id."""
        receipt = self.report(report, reporter, signature, sender=sender)
        return int(receipt.event("Reported")["disputeId"])

    def challenge(
        self, dispute_id: int, counter_evidence_hash: str, *, sender: Account | None = None
    ) -> Receipt:
        """Contest an open dispute against the sender, within the challenge window."""
        evidence = from_hex(counter_evidence_hash, size=32, what="counter_evidence_hash")
        return self._transact("challenge", dispute_id, evidence, sender=sender)

    def execute_slash(self, dispute_id: int, *, sender: Account | None = None) -> Receipt:
        """Slash an unchallenged dispute after its window (anyone)."""
        return self._transact("executeSlash", dispute_id, sender=sender)

    def resolve(self, dispute_id: int, upheld: bool, *, sender: Account | None = None) -> Receipt:
        """Decide a challenged dispute (:data:`SLASHER_ROLE` only)."""
        return self._transact("resolve", dispute_id, upheld, sender=sender)

    def slash(self, agent: str, amount: int, *, sender: Account | None = None) -> Receipt:
        """Slash ``amount`` of an agent's bonded stake to the treasury (slasher only)."""
        return self._transact("slash", to_checksum_address(agent), amount, sender=sender)

    def set_params(self, params: AgentParams, *, sender: Account | None = None) -> Receipt:
        """Change stake, bond, periods and rates (admin only)."""
        return self._transact("setParams", params.as_abi_tuple(), sender=sender)

    def params(self) -> AgentParams:
        """Return the current parameters."""
        return AgentParams(*self._call("params"))

    def get_agent(self, agent: str) -> AgentInfo:
        """Return an agent; raises ``ContractRevertError`` (``NotRegistered``) if absent."""
        stake, unbonding, ends, disputes, _, models = self._call(
            "getAgent", to_checksum_address(agent)
        )
        return AgentInfo(Wei(stake), Wei(unbonding), ends, disputes, tuple(plain(list(models))))

    def is_active(self, agent: str) -> bool:
        """Return whether ``agent`` is registered with at least the minimum stake."""
        return bool(self._call("isActive", to_checksum_address(agent)))

    def get_dispute(self, dispute_id: int) -> DisputeInfo:
        """Return a dispute; raises ``ContractRevertError`` (``UnknownDispute``) if absent."""
        agent, reporter, status, ends, model, request, evidence, counter, bond = self._call(
            "getDispute", dispute_id
        )
        return DisputeInfo(
            agent=to_checksum_address(agent),
            reporter=to_checksum_address(reporter),
            status=DisputeStatus(status),
            challenge_ends=ends,
            model_id=plain(model),
            request_hash=plain(request),
            evidence_hash=plain(evidence),
            counter_evidence_hash=plain(counter),
            bond=Wei(bond),
        )

    def total_bonded(self) -> Wei:
        """Return the sum of all agents' staked and unbonding tokens."""
        return Wei(int(self._call("totalBonded")))

    def treasury(self) -> Address:
        """Return where the protocol's part of slashes goes."""
        return to_checksum_address(self._call("treasury"))

    def nonces(self, account: str) -> int:
        """Return ``account``'s next report nonce."""
        return int(self._call("nonces", to_checksum_address(account)))


def _ids(values: Sequence[str]) -> list[bytes]:
    return [from_hex(v, size=32, what="model id") for v in values]
