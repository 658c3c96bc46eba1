"""Settlement from the gateway's ledger: receipts -> credited usage -> one reward epoch.

:func:`settle_ledger` pays the closed windows' receipts once, and only once:

1. **Recover.** An epoch an earlier run left ``prepared`` (persisted, maybe sent) is
   looked up on chain by its id: posted with the same root, it is marked posted (that
   run's transaction landed); not posted, it is posted now with the same id and root;
   posted with another root (someone else took the id), it is abandoned and its receipts
   go back to pending. Nothing is ever posted twice: the ledger holds the epoch before the
   transaction leaves, and the contract refuses a second epoch under one id.
2. **Select** the receipts of windows up to ``through_window`` (default: every closed
   window) not settled yet. A receipt served with adapters needs one attribution per
   adapter (written by :mod:`openledger.gateway.attribution_worker`); one still waiting
   stays for a later settle, never dropped.
3. **Check** what one receipt can claim: the operator's signature; adapter weights summing
   to one share at most; each adapter's contributor shares summing to one at most; the
   snapshot root each attribution credits published on chain (``SnapshotPublished``).
4. **Credit.** Each (receipt, adapter) becomes a :class:`~openledger.attribution.UsageReceipt`
   (id ``keccak256(requestId ++ adapterId)``, the receipt's tokens, each contributor's
   share times the adapter's weight), signed by the operator in the rewards domain. The
   pool (``pool_wei``, or ``wei_per_1k_tokens`` times the credited tokens) is split over
   them with :func:`~openledger.attribution.split_rewards` into a reward tree.
5. **Persist, then post.** The epoch (id, root, payouts, usage receipts) and each
   receipt's ``settled`` row are written in one fsync'd transaction; then the epoch is
   posted; then it is marked posted with its transaction hash.

Receipts of the base model alone credit nobody: they are settled with no epoch.
:func:`claims_of` serves each account's unclaimed payouts with their proofs from the
ledger, after any restart.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openledger.attribution import (
    SHARE_UNITS,
    Ledger,
    RewardPolicy,
    SignedReceipt,
    UsageReceipt,
    epoch_bond_penalties,
    split_rewards,
)
from openledger.chain import Protocol, RewardTree
from openledger.crypto import Account, keccak256_hex, to_checksum_address
from openledger.exceptions import (
    AttributionInputError,
    ConfigError,
    ContractRevertError,
    ReceiptError,
    SettlementError,
)
from openledger.gateway.ledger import ReceiptLedger
from openledger.gateway.receipts import GatewayReceipt, SignedGatewayReceipt
from openledger.types import Address, Hash32

__all__ = [
    "Claim",
    "LedgerSettings",
    "Settlement",
    "claims_of",
    "ledger_settings",
    "recover_epochs",
    "settle_ledger",
]

DAY = 86_400
DEFAULT_CLAIM_WINDOW = 30 * DAY


@dataclass(frozen=True, slots=True)
class Claim:
    """One unclaimed payout: what an account sends to ``claim`` (or a relayer to ``claimFor``).

    Attributes:
        epoch_id: The epoch.
        account: The payee.
        amount: Wei.
        proof: The Merkle proof of ``(account, amount)``.
        root: The epoch's root.
        deadline: Unix time the claim window closes.
    """

    epoch_id: int
    account: Address
    amount: int
    proof: list[Hash32]
    root: Hash32
    deadline: int

    def to_json(self) -> dict[str, Any]:
        """The claim as JSON (amounts as decimal strings: they exceed 2**53)."""
        return {
            "epoch_id": self.epoch_id,
            "account": self.account,
            "amount": str(self.amount),
            "proof": list(self.proof),
            "root": self.root,
            "deadline": self.deadline,
        }


@dataclass
class Settlement:
    """What one :func:`settle_ledger` run did.

    Attributes:
        epoch_id: The epoch it posted (None when nothing was owed).
        root: Its reward root.
        total: Wei it paid in.
        payouts: Wei per payee.
        transaction: The posting transaction's hash.
        settled: Request ids it paid for.
        nothing_owed: Request ids settled without an epoch (the base model alone, or no
            contributor with a positive share).
        waiting: Request ids left for a later settle (attribution not written yet).
        held: Request ids refused, with why (they stay pending; fix and settle again).
        recovered: Epochs of earlier, interrupted runs: ``{epoch id: "posted" | "confirmed"
            | "abandoned"}``.
        bond_penalties: Wei slashed from contributors' data bonds since the previous epoch,
            in the datanets this epoch credits (reported, not deducted again; see
            :func:`~openledger.attribution.epoch_bond_penalties`).
    """

    epoch_id: int | None = None
    root: Hash32 | None = None
    total: int = 0
    payouts: dict[Address, int] = field(default_factory=dict)
    transaction: str | None = None
    settled: list[Hash32] = field(default_factory=list)
    nothing_owed: list[Hash32] = field(default_factory=list)
    waiting: list[Hash32] = field(default_factory=list)
    held: dict[Hash32, str] = field(default_factory=dict)
    recovered: dict[int, str] = field(default_factory=dict)
    bond_penalties: dict[Address, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """The fixed settings a gateway wrote into its ledger (see :func:`ledger_settings`)."""

    operator: Address
    epoch_seconds: int
    domain: dict[str, Any]


def ledger_settings(ledger: ReceiptLedger) -> LedgerSettings:
    """Read the operator, window length and receipt domain the ledger's gateway uses.

    Raises:
        ConfigError: No gateway has run on this ledger yet.
    """
    rows = dict(ledger.read("SELECT name, value FROM settings"))
    if "operator" not in rows:
        raise ConfigError(f"{ledger.path} has no gateway settings: serve with it first")
    domain = json.loads(rows["receipt_domain"])
    return LedgerSettings(to_checksum_address(rows["operator"]), int(rows["epoch_seconds"]), domain)


def settle_ledger(
    ledger: ReceiptLedger,
    protocol: Protocol,
    *,
    operator: Account,
    pool_wei: int | None = None,
    wei_per_1k_tokens: int | None = None,
    through_window: int | None = None,
    policy: RewardPolicy | None = None,
    claim_window: int = DEFAULT_CLAIM_WINDOW,
    require_published_snapshots: bool = True,
    extra: Sequence[UsageReceipt] = (),
    now: float | None = None,
) -> Settlement:
    """Recover interrupted epochs, then pay the pending receipts in one new epoch.

    Args:
        ledger: The gateway's ledger.
        protocol: Where epochs are posted; its default sender is the settler (holds
            ``SETTLER_ROLE`` and the pool's tokens).
        operator: The gateway's operator key (signs the usage receipts; must be the one
            that signed the gateway receipts).
        pool_wei: The pool to split; or
        wei_per_1k_tokens: a price: the pool is this times the credited tokens / 1000.
        through_window: Settle receipts of windows up to this one (default: every window
            that has closed, ``now // epoch_seconds - 1``).
        policy: Developer and protocol fees.
        claim_window: Seconds payees have to claim (at least the contract's minimum).
        require_published_snapshots: Hold attributions whose snapshot is not published on
            chain under its datanet (off only for deployments without a registry).
        extra: Usage this gateway did not meter but the operator vouches for (a
            retrieval-augmented answer credited by context ablation, say), paid in the same
            epoch: signed by ``operator`` and kept in the epoch with the rest.
        now: Unix time (default now).

    Raises:
        ConfigError: Both or neither of ``pool_wei`` and ``wei_per_1k_tokens``, one not
            positive, or an operator other than the ledger's.
        SettlementError: An interrupted epoch cannot be resolved, or another settle ran at
            the same time (nothing of this run is kept; run it again).
    """
    if (pool_wei is None) == (wei_per_1k_tokens is None):
        raise ConfigError("give exactly one of pool_wei and wei_per_1k_tokens")
    for name, value in (("pool_wei", pool_wei), ("wei_per_1k_tokens", wei_per_1k_tokens)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    settings = ledger_settings(ledger)
    if operator.address != settings.operator:
        raise ConfigError(
            f"{ledger.path} is signed by operator {settings.operator}, not {operator.address}"
        )
    result = Settlement()
    result.recovered = recover_epochs(ledger, protocol, claim_window=claim_window)
    window = (
        through_window
        if through_window is not None
        else int(time.time() if now is None else now) // settings.epoch_seconds - 1
    )
    credits = _credits(ledger, protocol, settings, window, require_published_snapshots, result)
    usages = [_usage(receipt, part) for receipt, parts in credits for part in parts]
    owed = [r for r, parts in credits if parts]
    result.nothing_owed = [r.request_id for r, parts in credits if not parts]
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in owed)
    tokens += sum(u.tokens for u in extra)
    pool = pool_wei if pool_wei is not None else tokens * (wei_per_1k_tokens or 0) // 1000
    usages += list(extra)
    if not usages or pool <= 0:
        result.nothing_owed += [r.request_id for r in owed]
        owed = []
    # NOTE: the rewards domain and signing of attribution's own Ledger, so its checks verify
    book = Ledger(protocol, [operator.address])
    signed = [book.sign(u, operator) for u in usages] if usages and pool > 0 else []
    epoch = None
    if signed:
        window_start = _window_start(ledger, protocol)
        roots = {u.snapshot_root for u in usages}
        slashed = epoch_bond_penalties(protocol, roots, window_start=window_start)
        try:
            split = split_rewards(
                signed, pool, policy, bond_penalties={str(a): w for a, w in slashed.items()}
            )
        except AttributionInputError:  # NOTE: every share rounded to zero: nobody is owed
            result.nothing_owed += [r.request_id for r in owed]
            owed = []
        else:
            epoch = _Prepared.new(ledger, protocol, split.payouts, signed, window, claim_window)
    _persist(ledger, epoch, [r.request_id for r in owed], result.nothing_owed)
    if epoch is not None:
        result.transaction = _post(ledger, protocol, epoch, claim_window)
        result.epoch_id, result.root = epoch.epoch_id, epoch.tree.root
        result.total = int(epoch.tree.total)
        result.payouts = {a: int(w) for a, w in epoch.tree.payouts.items()}
        result.settled = [r.request_id for r in owed]
        result.bond_penalties = dict(split.bond_penalties)
    return result


def _window_start(ledger: ReceiptLedger, protocol: Protocol) -> int:
    """The block after the one that posted this ledger's latest epoch (0 before the first)."""
    rows = ledger.read(
        "SELECT tx_hash FROM epochs WHERE state = 'posted' AND tx_hash IS NOT NULL "
        "ORDER BY epoch_id DESC LIMIT 1"
    )
    for (tx_hash,) in rows:
        found = protocol.chain.find_receipt(tx_hash)
        if found is not None:
            return int(found["blockNumber"]) + 1
    return 0


def recover_epochs(
    ledger: ReceiptLedger, protocol: Protocol, *, claim_window: int = DEFAULT_CLAIM_WINDOW
) -> dict[int, str]:
    """Resolve every epoch an interrupted settle left ``prepared`` (see the module docstring).

    Returns:
        ``{epoch id: "confirmed" (it had landed) | "posted" (posted now) | "abandoned"}``.

    Raises:
        SettlementError: A prepared epoch belongs to another chain or contract.
    """
    outcome: dict[int, str] = {}
    for epoch in _Prepared.pending(ledger):
        if (epoch.chain_id, epoch.contract) != (protocol.chain.chain_id, protocol.rewards.address):
            raise SettlementError(
                f"epoch {epoch.epoch_id} of {ledger.path} was prepared for rewards contract "
                f"{epoch.contract} on chain {epoch.chain_id}; settle it there first"
            )
        try:
            on_chain = protocol.rewards.get_epoch(epoch.epoch_id)
        except ContractRevertError as exc:
            if exc.error_name != "UnknownEpoch":
                raise
            _post(ledger, protocol, epoch, claim_window)
            outcome[epoch.epoch_id] = "posted"
            continue
        if on_chain.root.lower() == epoch.tree.root.lower():
            _mark(ledger, epoch.epoch_id, "posted", None, deadline=on_chain.deadline)
            outcome[epoch.epoch_id] = "confirmed"
        else:
            _mark(ledger, epoch.epoch_id, "abandoned", None)
            outcome[epoch.epoch_id] = "abandoned"
    return outcome


def claims_of(ledger: ReceiptLedger, account: str, protocol: Protocol | None = None) -> list[Claim]:
    """Every payout of ``account`` in the ledger's posted epochs, with its proof.

    Args:
        ledger: The gateway's ledger.
        account: The payee.
        protocol: When given, payouts already claimed (or swept) on chain are left out.
    """
    address = to_checksum_address(account, what="account")
    claims = []
    rows = ledger.read(
        "SELECT epoch_id, root, deadline, body FROM epochs WHERE state = 'posted' ORDER BY epoch_id"
    )
    for epoch_id, root, deadline, body in rows:
        payouts = {a: int(w) for a, w in json.loads(body)["payouts"].items()}
        if address not in payouts:
            continue
        if protocol is not None:
            if protocol.rewards.is_claimed(epoch_id, address):
                continue
            if protocol.rewards.get_epoch(epoch_id).swept:
                continue
        tree = RewardTree(payouts)
        claims.append(
            Claim(epoch_id, address, payouts[address], tree.proof(address), root, deadline)
        )
    return claims


# -- selection and checks ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    """One adapter's part of a receipt: its weight and its contributors' shares."""

    adapter_id: Hash32
    snapshot_root: Hash32
    weight: int
    shares: dict[Address, int]
    penalties: dict[Address, int]


def _credits(
    ledger: ReceiptLedger,
    protocol: Protocol,
    settings: LedgerSettings,
    window: int,
    require_published: bool,
    result: Settlement,
) -> list[tuple[GatewayReceipt, list[_Part]]]:
    """The pending receipts of windows up to ``window`` that can be settled, with their parts."""
    found = []
    published = protocol.datanets.published_roots() if require_published else set()
    for signed, attributions, waiting in _pending(ledger, window):
        receipt = signed.receipt
        try:
            signed.verify(settings.operator, settings.domain)
            _check_weights(receipt)
            if waiting:
                result.waiting.append(receipt.request_id)
                continue
            parts = []
            weights = zip(receipt.adapter_ids, receipt.adapter_weights, strict=True)
            for adapter_id, weight in weights:
                row = attributions.get(adapter_id)
                if row is None:  # NOTE: no answer text to attribute (an empty answer)
                    continue
                if require_published:
                    _check_published(row["snapshot_root"], row["weights"], published)
                parts.append(_part(adapter_id, weight, row))
        except (ReceiptError, SettlementError) as exc:
            result.held[receipt.request_id] = str(exc)
            continue
        found.append((receipt, [p for p in parts if p.shares or p.penalties]))
    return found


def _pending(
    ledger: ReceiptLedger, window: int
) -> Iterator[tuple[SignedGatewayReceipt, dict[Hash32, dict[str, Any]], bool]]:
    """Unsettled receipts of windows up to ``window``, with their attributions, and
    whether their answers still wait for attribution."""
    rows = ledger.read(
        "SELECT r.body, a.adapter_id, a.snapshot_root, a.datanet_id, a.snapshot_id, a.shares, "
        "EXISTS (SELECT 1 FROM answers t WHERE t.request_id = r.request_id) "
        "FROM receipts r LEFT JOIN attributions a ON a.request_id = r.request_id "
        "WHERE r.epoch <= ? AND r.request_id NOT IN (SELECT request_id FROM settled) "
        "ORDER BY r.rowid",
        (window,),
    )
    current: SignedGatewayReceipt | None = None
    parts: dict[Hash32, dict[str, Any]] = {}
    last_body = None
    waiting = False
    for body, adapter_id, root, datanet_id, snapshot_id, shares, has_answers in rows:
        if body != last_body:
            if current is not None:
                yield current, parts, waiting
            current, parts, last_body = SignedGatewayReceipt.model_validate_json(body), {}, body
            waiting = bool(has_answers)
        if adapter_id is not None:
            parts[Hash32(adapter_id)] = {
                "snapshot_root": root,
                "datanet_id": datanet_id,
                "snapshot_id": snapshot_id,
                **json.loads(shares),
            }
    if current is not None:
        yield current, parts, waiting


def _check_weights(receipt: GatewayReceipt) -> None:
    """Adapter weights may sum to one share (plus one unit of rounding per adapter)."""
    if sum(receipt.adapter_weights) > SHARE_UNITS + len(receipt.adapter_weights):
        raise ReceiptError(
            f"receipt {receipt.request_id}: adapter weights sum to "
            f"{sum(receipt.adapter_weights) / SHARE_UNITS:.9f}, more than one"
        )


def _part(adapter_id: Hash32, weight: int, row: dict[str, Any]) -> _Part:
    shares = {to_checksum_address(a): int(v) for a, v in row["weights"].items()}
    penalties = {to_checksum_address(a): int(v) for a, v in row["penalties"].items()}
    if any(v <= 0 for v in shares.values()) or sum(shares.values()) > SHARE_UNITS + len(shares):
        raise ReceiptError(
            f"the attribution of adapter {adapter_id} gives shares that are not positive or "
            "sum to more than one"
        )
    scaled = {a: v * weight // SHARE_UNITS for a, v in shares.items()}
    scaled_penalties = {a: v * weight // SHARE_UNITS for a, v in penalties.items()}
    return _Part(
        adapter_id,
        Hash32(row["snapshot_root"]),
        weight,
        {a: v for a, v in scaled.items() if v > 0},
        {a: v for a, v in scaled_penalties.items() if v > 0},
    )


def _check_published(root: str, weights: dict[str, int], published: set[Hash32]) -> None:
    """Raise unless a crediting attribution's snapshot root is published on chain."""
    if weights and root.lower() not in published:
        raise SettlementError(f"snapshot root {root} is not published on chain by any datanet")


def _usage(receipt: GatewayReceipt, part: _Part) -> UsageReceipt:
    request = bytes.fromhex(receipt.request_id[2:]) + bytes.fromhex(part.adapter_id[2:])
    return UsageReceipt(
        request_id=keccak256_hex(request),
        adapter_id=part.adapter_id,
        snapshot_root=part.snapshot_root,
        tokens=max(1, receipt.prompt_tokens + receipt.completion_tokens),
        contributors=tuple(part.shares),
        weights=tuple(part.shares.values()),
        penalized=tuple(part.penalties),
        penalties=tuple(part.penalties.values()),
    )


# -- epochs: persisted before they are posted -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An epoch as the ledger holds it."""

    epoch_id: int
    chain_id: int
    contract: Address
    through_window: int
    tree: RewardTree
    receipts: tuple[SignedReceipt, ...]

    @classmethod
    def new(
        cls,
        ledger: ReceiptLedger,
        protocol: Protocol,
        payouts: Mapping[Address, int],
        receipts: Sequence[SignedReceipt],
        window: int,
        claim_window: int,
    ) -> _Prepared:
        on_chain = protocol.rewards.posted_epoch_ids()
        known = ledger.read("SELECT MAX(epoch_id) FROM epochs")[0][0] or 0
        number = max([*on_chain, int(known)], default=0) + 1
        tree = RewardTree({str(a): int(w) for a, w in payouts.items() if w > 0})
        chain_id, contract = protocol.chain.chain_id, protocol.rewards.address
        return cls(number, chain_id, contract, window, tree, tuple(receipts))

    @classmethod
    def pending(cls, ledger: ReceiptLedger) -> list[_Prepared]:
        rows = ledger.read(
            "SELECT epoch_id, chain_id, contract, through_window, body FROM epochs "
            "WHERE state = 'prepared' ORDER BY epoch_id"
        )
        found = []
        for epoch_id, chain_id, contract, window, body in rows:
            data = json.loads(body)
            tree = RewardTree({a: int(w) for a, w in data["payouts"].items()})
            receipts = tuple(SignedReceipt.model_validate(r) for r in data["receipts"])
            found.append(cls(epoch_id, chain_id, contract, window, tree, receipts))
        return found

    def body(self) -> str:
        return json.dumps(
            {
                "payouts": {a: str(w) for a, w in self.tree.payouts.items()},
                "receipts": [r.model_dump(mode="json") for r in self.receipts],
            },
            sort_keys=True,
        )


def _persist(
    ledger: ReceiptLedger,
    epoch: _Prepared | None,
    paid: Sequence[Hash32],
    nothing_owed: Sequence[Hash32],
) -> None:
    """Write the epoch (prepared) and the receipts it settles in one transaction."""
    if epoch is None and not nothing_owed:
        return
    try:
        with ledger.transaction() as conn:
            if epoch is not None:
                conn.execute(
                    "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, 0, 'prepared', NULL, ?, ?)",
                    (
                        epoch.epoch_id,
                        epoch.chain_id,
                        epoch.contract,
                        epoch.through_window,
                        epoch.tree.root,
                        str(epoch.tree.total),
                        int(time.time()),
                        epoch.body(),
                    ),
                )
                conn.executemany(
                    "INSERT INTO settled VALUES (?, ?)", [(r, epoch.epoch_id) for r in paid]
                )
            conn.executemany("INSERT INTO settled VALUES (?, NULL)", [(r,) for r in nothing_owed])
    except sqlite3.IntegrityError:
        raise SettlementError(
            "another settle of this ledger ran at the same time and took some of these "
            "receipts or this epoch id; nothing of this run was kept, run it again"
        ) from None


def _post(ledger: ReceiptLedger, protocol: Protocol, epoch: _Prepared, claim_window: int) -> str:
    """Post a persisted epoch and mark it posted; returns the transaction hash."""
    window = max(claim_window, protocol.rewards.min_claim_window() + 60)
    deadline = protocol.chain.block_timestamp() + window
    with ledger.transaction() as conn:
        conn.execute(
            "UPDATE epochs SET deadline = ? WHERE epoch_id = ?", (deadline, epoch.epoch_id)
        )
    transaction = protocol.rewards.post_reward_tree(epoch.epoch_id, epoch.tree, deadline)
    tx_hash = str(transaction.tx_hash)
    _mark(ledger, epoch.epoch_id, "posted", tx_hash)
    return tx_hash


def _mark(
    ledger: ReceiptLedger,
    epoch_id: int,
    state: str,
    tx_hash: str | None,
    *,
    deadline: int | None = None,
) -> None:
    with ledger.transaction() as conn:
        if state == "abandoned":
            conn.execute("DELETE FROM settled WHERE epoch_id = ?", (epoch_id,))
        conn.execute(
            "UPDATE epochs SET state = ?, tx_hash = COALESCE(?, tx_hash), "
            "deadline = COALESCE(?, deadline) WHERE epoch_id = ?",
            (state, tx_hash, deadline, epoch_id),
        )
