"""Proof of attribution on chain: signed usage receipts -> epochs -> claims.

A served request yields a :class:`UsageReceipt` (adapter, snapshot, tokens, contributors'
quantised shares), EIP-712 signed by the serving operator. A :class:`Ledger` accepts only
receipts signed by its trusted operators, splits a pool over them with
:func:`~openledger.attribution.split_rewards`, builds the reward Merkle tree, posts it
through ``protocol.rewards`` and hands out each payee's proof. Receipts are typed data::

    UsageReceipt(bytes32 requestId, bytes32 adapterId, bytes32 snapshotRoot, uint256 tokens,
                 address[] contributors, uint256[] weights,
                 address[] penalized, uint256[] penalties)

in the domain ``("OpenLedger Usage", "1", chainId, verifyingContract = rewards contract)``.
Weights and penalties are shares times :data:`~openledger.attribution.rewards.SHARE_UNITS`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from openledger.attribution.report import AttributionReport
from openledger.attribution.rewards import (
    SHARE_UNITS,
    RewardPolicy,
    RewardSplit,
    payouts_html,
    split_rewards,
)
from openledger.chain import Protocol, Receipt, RewardTree
from openledger.crypto import (
    Account,
    TypedData,
    eip712_domain,
    recover_typed_data,
    to_checksum_address,
    typed_data,
)
from openledger.exceptions import AttributionInputError, CryptoError, ReceiptError
from openledger.types import Address, Hash32, Wei, to_hash32

__all__ = [
    "RECEIPT_TYPES",
    "Epoch",
    "Ledger",
    "SignedReceipt",
    "UsageReceipt",
    "epoch_bond_penalties",
    "settle",
]

RECEIPT_TYPES = {
    "UsageReceipt": [
        ("requestId", "bytes32"),
        ("adapterId", "bytes32"),
        ("snapshotRoot", "bytes32"),
        ("tokens", "uint256"),
        ("contributors", "address[]"),
        ("weights", "uint256[]"),
        ("penalized", "address[]"),
        ("penalties", "uint256[]"),
    ]
}
"""EIP-712 struct of a usage receipt."""

DAY = 86_400


class UsageReceipt(BaseModel):
    """What one served request used: whose data, how much (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: Hash32
    adapter_id: Hash32
    snapshot_root: Hash32
    tokens: int = Field(ge=1)
    contributors: tuple[Address, ...]
    weights: tuple[int, ...]
    penalized: tuple[Address, ...] = ()
    penalties: tuple[int, ...] = ()

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ReceiptError(f"invalid usage receipt: {exc}") from None

    @field_validator("request_id", "adapter_id", "snapshot_root", mode="before")
    @classmethod
    def _hash(cls, value: Any) -> str:
        return to_hash32(value)

    @field_validator("contributors", "penalized", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> tuple[str, ...]:
        return tuple(to_checksum_address(a) for a in value)

    @model_validator(mode="after")
    def _consistent(self) -> UsageReceipt:
        for names, values in ((self.contributors, self.weights), (self.penalized, self.penalties)):
            if len(names) != len(values) or any(v <= 0 for v in values):
                raise ValueError("give one positive integer per contributor")
            if len({a.lower() for a in names}) != len(names):
                raise ValueError("a contributor appears twice")
        return self

    @classmethod
    def from_report(
        cls, report: AttributionReport, *, tokens: int, request_id: str | None = None
    ) -> UsageReceipt:
        """Make the receipt of a served answer from its attribution report.

        Args:
            report: The answer's report.
            tokens: Tokens served (prompt + completion, as billed).
            request_id: 32-byte id; default keccak256 of the report's JSON.
        """
        from openledger.crypto import keccak256_hex

        weights = report.contributor_weights()
        penalties = {a: round(-s * SHARE_UNITS) for a, s in report.penalties().items()}
        penalties = {a: p for a, p in penalties.items() if p > 0}
        return cls(
            request_id=request_id or keccak256_hex(report.to_json().encode()),
            adapter_id=report.adapter_id,
            snapshot_root=report.snapshot_root,
            tokens=tokens,
            contributors=tuple(weights),
            weights=tuple(weights.values()),
            penalized=tuple(penalties),
            penalties=tuple(penalties.values()),
        )

    def contributor_weights(self) -> dict[Address, int]:
        """Return weight times tokens by contributor."""
        return {a: w * self.tokens for a, w in zip(self.contributors, self.weights, strict=True)}

    def penalties_of(self) -> dict[Address, float]:
        """Return negative influence by contributor, in shares."""
        pairs = zip(self.penalized, self.penalties, strict=True)
        return {a: -p / SHARE_UNITS for a, p in pairs}

    def typed_data(self, domain: dict[str, Any]) -> TypedData:
        """Return the EIP-712 payload of this receipt in ``domain``."""
        message = {
            "requestId": bytes.fromhex(self.request_id[2:]),
            "adapterId": bytes.fromhex(self.adapter_id[2:]),
            "snapshotRoot": bytes.fromhex(self.snapshot_root[2:]),
            "tokens": self.tokens,
            "contributors": list(self.contributors),
            "weights": list(self.weights),
            "penalized": list(self.penalized),
            "penalties": list(self.penalties),
        }
        return typed_data(domain, RECEIPT_TYPES, "UsageReceipt", message)


class SignedReceipt(BaseModel):
    """A usage receipt with the operator's 65-byte EIP-712 signature (``0x``-hex)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    receipt: UsageReceipt
    signature: str

    def signer(self, domain: dict[str, Any]) -> Address:
        """Return who signed the receipt in ``domain``.

        Raises:
            ReceiptError: If the signature is malformed.
        """
        try:
            return recover_typed_data(self.receipt.typed_data(domain), self.signature)
        except CryptoError as exc:
            raise ReceiptError(f"receipt {self.receipt.request_id}: {exc}") from None

    def contributor_weights(self) -> dict[Address, int]:
        """The receipt's weights (see :meth:`UsageReceipt.contributor_weights`)."""
        return self.receipt.contributor_weights()

    def penalties(self) -> dict[Address, float]:
        """The receipt's penalties in shares."""
        return self.receipt.penalties_of()


@dataclass
class Epoch:
    """A posted reward epoch and what each payee needs to claim.

    Attributes:
        epoch_id: The on-chain epoch id.
        tree: Its reward tree (payouts, root, proofs).
        split: How the pool was divided.
        receipts: The receipts it settles.
        transaction: The posting transaction.
        protocol: Where it was posted.
    """

    epoch_id: int
    tree: RewardTree
    split: RewardSplit
    receipts: list[SignedReceipt]
    transaction: Receipt
    protocol: Protocol = field(repr=False)

    def amount_of(self, account: str) -> int:
        """Return ``account``'s payout in wei."""
        return int(self.tree.amount_of(account))

    def proof(self, account: str) -> list[Hash32]:
        """Return ``account``'s Merkle proof."""
        return self.tree.proof(account)

    def _repr_html_(self) -> str:
        title = (
            f"Epoch {self.epoch_id} (root {self.tree.root[:18]}..., {len(self.receipts)} receipts)"
        )
        return payouts_html(self.split, title)

    def claim(self, account: Account | str, *, sender: Account | None = None) -> Receipt:
        """Claim ``account``'s payout (an address is relayed by ``sender``)."""
        return self.protocol.rewards.claim_from_tree(
            self.epoch_id, self.tree, account, sender=sender
        )


class Ledger:
    """Collects signed usage receipts and settles them in reward epochs.

    Args:
        protocol: The deployed protocol (its default sender posts epochs and must be a
            settler holding the tokens).
        operators: Addresses whose receipt signatures are trusted.
        policy: Fee split applied at each epoch.
        from_block: Where log reads start (on a long-lived network, the deployment block).
        window_start: The first block of the first epoch's window: data-bond penalties
            slashed from then on are reported in its split (default ``from_block``). Each
            later epoch's window starts after the block that posted the previous one.
    """

    def __init__(
        self,
        protocol: Protocol,
        operators: Sequence[str],
        policy: RewardPolicy | None = None,
        *,
        from_block: int = 0,
        window_start: int | None = None,
    ) -> None:
        if not operators:
            raise AttributionInputError("a ledger needs at least one trusted operator address")
        window_start = from_block if window_start is None else window_start
        for name, value in (("from_block", from_block), ("window_start", window_start)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AttributionInputError(f"{name} must be a block number, got {value!r}")
        self.protocol = protocol
        self.operators = frozenset(to_checksum_address(a) for a in operators)
        self.policy = policy
        self.pending: list[SignedReceipt] = []
        self._seen: set[str] = set()
        self.from_block = from_block
        self.window_start = window_start

    @property
    def domain(self) -> dict[str, Any]:
        """The EIP-712 domain receipts are signed in."""
        return eip712_domain(
            "OpenLedger Usage",
            "1",
            chain_id=self.protocol.chain.chain_id,
            verifying_contract=self.protocol.rewards.address,
        )

    def sign(self, receipt: UsageReceipt, operator: Account) -> SignedReceipt:
        """Sign ``receipt`` as ``operator`` in this ledger's domain."""
        signature = operator.sign_typed_data(receipt.typed_data(self.domain))
        return SignedReceipt(receipt=receipt, signature="0x" + signature.hex())

    def check(self, signed: SignedReceipt) -> None:
        """Raise unless ``signed`` is by a trusted operator and new.

        Raises:
            ReceiptError: A stranger's signature, or a request id already recorded.
        """
        signer = signed.signer(self.domain)
        if signer not in self.operators:
            raise ReceiptError(
                f"receipt {signed.receipt.request_id} is signed by {signer}, who is not a "
                "trusted operator of this ledger"
            )
        if signed.receipt.request_id in self._seen:
            raise ReceiptError(f"receipt {signed.receipt.request_id} was already recorded")

    def add(self, receipts: Sequence[SignedReceipt]) -> None:
        """Record receipts; all are checked first, so one bad receipt records none.

        Raises:
            ReceiptError: See :meth:`check`, or a request id repeated within ``receipts``.
        """
        ids = [r.receipt.request_id for r in receipts]
        if len(set(ids)) != len(ids):
            raise ReceiptError("a request id appears twice among the receipts")
        for signed in receipts:
            self.check(signed)
        self.pending.extend(receipts)
        self._seen.update(ids)

    def close_epoch(
        self, pool_wei: int, *, epoch_id: int | None = None, deadline: int | None = None
    ) -> Epoch:
        """Split ``pool_wei`` over the pending receipts and post the epoch.

        Everything is validated before any transaction; pending receipts are cleared only
        once the epoch is posted.

        Raises:
            AttributionInputError: No pending receipts, a bad pool, no positive share.
            ContractRevertError: The chain refused the epoch (e.g. its id is taken).
        """
        if not self.pending:
            raise AttributionInputError("no pending receipts: nothing to settle")
        slashed = self.bond_penalties()
        split = split_rewards(
            self.pending,
            pool_wei,
            self.policy,
            bond_penalties={str(a): w for a, w in slashed.items()},
        )
        tree = RewardTree({str(a): int(w) for a, w in split.payouts.items()})
        number = epoch_id if epoch_id is not None else self._next_epoch_id()
        end = deadline if deadline is not None else self.protocol.chain.block_timestamp() + DAY
        transaction = self.protocol.rewards.post_reward_tree(number, tree, end)
        epoch = Epoch(number, tree, split, list(self.pending), transaction, self.protocol)
        self.pending = []
        self.window_start = transaction.block_number + 1
        return epoch

    def bond_penalties(self) -> dict[Address, Wei]:
        """Wei slashed from contributors' data bonds since :attr:`window_start`, in the
        datanets whose snapshots the pending receipts credit (see :func:`epoch_bond_penalties`);
        :meth:`close_epoch` reports them in the epoch's split
        (:attr:`~openledger.attribution.RewardSplit.bond_penalties`)."""
        roots = {r.receipt.snapshot_root for r in self.pending}
        return epoch_bond_penalties(
            self.protocol, roots, window_start=self.window_start, from_block=self.from_block
        )

    def _next_epoch_id(self) -> int:
        return max(self.protocol.rewards.posted_epoch_ids(self.from_block), default=0) + 1


def settle(
    reports: Sequence[AttributionReport],
    pool_wei: int,
    protocol: Protocol,
    *,
    operator: Account | None = None,
    tokens: Sequence[int] | None = None,
    policy: RewardPolicy | None = None,
    epoch_id: int | None = None,
    window_start: int = 0,
) -> Epoch:
    """Sign a receipt per report, and settle them all in one epoch (the one-call form).

    Args:
        reports: Attribution reports of served answers.
        pool_wei: The reward pool in wei (pulled from the protocol's default sender).
        protocol: The deployed protocol.
        operator: The serving operator who signs receipts (default: the chain's default
            account).
        tokens: Tokens served per report (default 1 each: every answer weighs the same).
        policy: Fee split.
        epoch_id: The epoch id (default: one past the highest posted).
        window_start: Start of the epoch's window: data-bond penalties slashed since this
            block in the reports' datanets are reported in the split (see :class:`Ledger`).

    Raises:
        AttributionInputError: Empty reports, a bad pool, no positive share, mismatched
            ``tokens``; nothing is posted.
    """
    if not reports:
        raise AttributionInputError("no reports to settle")
    counts = list(tokens) if tokens is not None else [1] * len(reports)
    if len(counts) != len(reports):
        raise AttributionInputError("give one token count per report")
    signer = operator or protocol.chain.default_account
    ledger = Ledger(protocol, [signer.address], policy, window_start=window_start)
    receipts = [
        UsageReceipt.from_report(r, tokens=n, request_id=_request_id(r, i))
        for i, (r, n) in enumerate(zip(reports, counts, strict=True))
    ]
    ledger.add([ledger.sign(r, signer) for r in receipts])
    return ledger.close_epoch(pool_wei, epoch_id=epoch_id)


def epoch_bond_penalties(
    protocol: Protocol, snapshot_roots: Iterable[str], *, window_start: int, from_block: int = 0
) -> dict[Address, Wei]:
    """Wei slashed from contributors' data bonds (``DataBonds`` ``RecordFlagged`` logs) since
    block ``window_start``, in the datanets the ``snapshot_roots`` were published under.

    Args:
        protocol: The deployment (empty for one without ``DataBonds``).
        snapshot_roots: Roots an epoch credits (its receipts' ``snapshot_root``).
        window_start: First block of the epoch's window.
        from_block: Where reads of ``SnapshotPublished`` logs start (the deployment block).
    """
    bonds = protocol.bonds
    roots = set(snapshot_roots)
    # NOTE: nodes refuse log reads that start beyond the latest block (anvil)
    if bonds is None or not roots or window_start > protocol.chain.block_number():
        return {}
    datanets = protocol.datanets.datanets_of_roots(roots, from_block)
    return bonds.penalties(set(datanets.values()), window_start)


def _request_id(report: AttributionReport, position: int) -> str:
    from openledger.crypto import keccak256_hex

    nonce = os.urandom(16).hex()
    return keccak256_hex(f"{position}:{nonce}:{report.to_json()}".encode())
