"""Splitting a reward pool between the model developer, the protocol and data contributors.

Exact integer arithmetic, in this order::

    developer   = pool * developer_bps // 10_000
    protocol    = pool * protocol_bps  // 10_000
    contributors: the rest, by largest remainder over integer weights

A contributor's weight is the sum over usages of its quantised positive share
(``round(share * 10**9)``, see :data:`SHARE_UNITS`), times the usage's token count for
receipts (1 per plain report). Largest remainder: each gets ``floor(rest * w / W)``; the
wei left over go one each to the largest remainders ``rest * w mod W``, ties to the
lower address (case-insensitive). So amounts always sum exactly to the pool and depend
neither on the order of usages nor of contributors. Negative influence never pays or
costs: it is summed (``math.fsum``, order-independent) into :attr:`RewardSplit.reputation`.
Bond penalties (wei slashed on chain from contributors whose records validators flagged)
are reported beside the payouts (:attr:`RewardSplit.bond_penalties`): the slash has
already taken them from the bond, so the split neither charges them again nor pays them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from openledger.crypto import to_checksum_address
from openledger.exceptions import AttributionInputError
from openledger.types import Address, Wei

__all__ = [
    "BPS",
    "SHARE_UNITS",
    "RewardPolicy",
    "RewardSplit",
    "Usage",
    "largest_remainder",
    "split_rewards",
]

BPS = 10_000
"""Basis points in a whole."""

SHARE_UNITS = 10**9
"""A share of 1.0 in integer weight units."""


class Usage(Protocol):
    """Anything that says who earned how much weight: reports and usage receipts."""

    def contributor_weights(self) -> dict[Address, int]:
        """Return positive integer weights by contributor."""
        ...

    def penalties(self) -> dict[Address, float]:
        """Return negative influence by contributor."""
        ...


class RewardPolicy(BaseModel):
    """How a pool is divided before contributors are paid.

    Attributes:
        developer_bps: Basis points for the model developer.
        protocol_bps: Basis points for the protocol treasury.
        developer: The developer's address (required when ``developer_bps > 0``).
        protocol: The treasury's address (required when ``protocol_bps > 0``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    developer_bps: int = Field(default=0, ge=0, le=BPS)
    protocol_bps: int = Field(default=0, ge=0, le=BPS)
    developer: Address | None = None
    protocol: Address | None = None

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise AttributionInputError(f"invalid reward policy: {exc}") from None

    @model_validator(mode="after")
    def _consistent(self) -> RewardPolicy:
        if self.developer_bps + self.protocol_bps > BPS:
            raise ValueError("developer_bps + protocol_bps must not exceed 10000")
        for name in ("developer", "protocol"):
            if getattr(self, f"{name}_bps") > 0 and getattr(self, name) is None:
                raise ValueError(f"{name}_bps > 0 needs a {name} address")
            if getattr(self, name) is not None:
                object.__setattr__(self, name, to_checksum_address(getattr(self, name)))
        return self


@dataclass(frozen=True, slots=True)
class RewardSplit:
    """The outcome of :func:`split_rewards`.

    Attributes:
        pool: The pool split (wei).
        contributors: Wei per contributor with a positive weight.
        developer: Wei for the developer.
        protocol: Wei for the protocol.
        reputation: Summed negative influence per contributor (never paid or charged).
        policy: The policy applied.
        bond_penalties: Wei slashed from contributors' data bonds in the epoch's window
            (flagged records), by contributor: reported, not deducted again.
    """

    pool: Wei
    contributors: dict[Address, Wei]
    developer: Wei
    protocol: Wei
    reputation: dict[Address, float]
    policy: RewardPolicy
    bond_penalties: dict[Address, Wei] = field(default_factory=dict)

    @property
    def payouts(self) -> dict[Address, Wei]:
        """Every non-zero payout by address (developer and protocol merged in); sums to pool."""
        found = {a: int(w) for a, w in self.contributors.items()}
        for address, amount in (
            (self.policy.developer, self.developer),
            (self.policy.protocol, self.protocol),
        ):
            if address is not None and amount > 0:
                found[address] = found.get(address, 0) + amount
        return {a: Wei(w) for a, w in sorted(found.items()) if w > 0}

    def _repr_html_(self) -> str:
        return payouts_html(self)


def largest_remainder(weights: Mapping[Address, int], amount: int) -> dict[Address, Wei]:
    """Split ``amount`` in proportion to positive integer ``weights``, summing exactly.

    Raises:
        AttributionInputError: If no weight is positive or one is negative.
    """
    if any(w < 0 for w in weights.values()):
        raise AttributionInputError("weights must not be negative")
    total = sum(weights.values())
    if total <= 0:
        raise AttributionInputError("no contributor has a positive weight; nothing to split")
    shares = {a: amount * w // total for a, w in weights.items()}
    left = amount - sum(shares.values())
    order = sorted(weights, key=lambda a: (-(amount * weights[a] % total), a.lower()))
    for address in order[:left]:
        shares[address] += 1
    return {a: Wei(v) for a, v in sorted(shares.items(), key=lambda i: i[0].lower())}


def _check_pool(pool_wei: Any) -> int:
    if isinstance(pool_wei, bool) or not isinstance(pool_wei, int) or pool_wei <= 0:
        raise AttributionInputError(f"pool_wei must be a positive int (wei), got {pool_wei!r}")
    return pool_wei


def _weights(usages: Sequence[Usage]) -> dict[Address, int]:
    totals: dict[Address, int] = {}
    for usage in usages:
        for address, weight in usage.contributor_weights().items():
            totals[address] = totals.get(address, 0) + weight
    return {a: w for a, w in totals.items() if w > 0}


def _reputation(usages: Sequence[Usage]) -> dict[Address, float]:
    parts: dict[Address, list[float]] = {}
    for usage in usages:
        for address, value in usage.penalties().items():
            parts.setdefault(address, []).append(value)
    return {a: math.fsum(v) for a, v in sorted(parts.items())}


def split_rewards(
    reports: Sequence[Usage],
    pool_wei: int,
    policy: RewardPolicy | None = None,
    *,
    bond_penalties: Mapping[str, int] | None = None,
) -> RewardSplit:
    """Split ``pool_wei`` by attribution (see the module docstring).

    Args:
        reports: :class:`~openledger.attribution.AttributionReport` s or usage receipts.
        pool_wei: The pool in wei, > 0.
        policy: Fee split; default everything to contributors.
        bond_penalties: Wei slashed from contributors' bonds in this epoch's window (e.g.
            ``protocol.bonds.penalties(datanets, from_block)``), reported in the split.

    Returns:
        The :class:`RewardSplit`; its :attr:`~RewardSplit.payouts` sum to ``pool_wei``.

    Raises:
        AttributionInputError: No reports, a non-positive pool, or no contributor with a
            positive share.
    """
    pool = _check_pool(pool_wei)
    if not reports:
        raise AttributionInputError("no reports to split rewards over")
    rules = policy or RewardPolicy()
    developer = pool * rules.developer_bps // BPS
    protocol = pool * rules.protocol_bps // BPS
    rest = pool - developer - protocol
    weights = _weights(reports)
    if not weights:
        raise AttributionInputError(
            "no contributor has a positive share in these reports; nothing is paid"
        )
    # NOTE: every positive-weight contributor is listed, with 0 wei when the fees take all.
    contributors = largest_remainder(weights, rest)
    slashed = _bond_penalties(bond_penalties or {})
    return RewardSplit(
        Wei(pool),
        contributors,
        Wei(developer),
        Wei(protocol),
        _reputation(reports),
        rules,
        slashed,
    )


def _bond_penalties(penalties: Mapping[str, int]) -> dict[Address, Wei]:
    found: dict[Address, Wei] = {}
    for address, amount in penalties.items():
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise AttributionInputError(
                f"bond penalty of {address} must be a non-negative int (wei), got {amount!r}"
            )
        who = to_checksum_address(address)
        found[who] = Wei(found.get(who, 0) + amount)
    return {a: w for a, w in sorted(found.items(), key=lambda i: i[0].lower()) if w > 0}


def payouts_html(split: RewardSplit, title: str = "Reward split") -> str:
    """Render a split as an HTML table: one row per payee, its role, wei and share."""
    roles: dict[str, list[str]] = {}
    for address in split.contributors:
        roles.setdefault(address, []).append("contributor")
    for role in ("developer", "protocol"):
        address = getattr(split.policy, role)
        if address is not None and getattr(split, role) > 0:
            roles.setdefault(address, []).append(role)
    payouts = split.payouts
    slashed = split.bond_penalties
    # NOTE: a contributor whose bond was slashed is listed even when the epoch pays it nothing
    listed = dict(sorted(payouts.items(), key=lambda kv: -kv[1]))
    listed.update({a: Wei(0) for a in slashed if a not in listed})
    bond_head = "<th>bond slashed (wei)</th>" if slashed else ""

    def bond_cell(address: Address) -> str:
        if not slashed:
            return ""
        amount = slashed.get(address)
        return f'<td style="text-align:right">{amount if amount else ""}</td>'

    rows = "".join(
        f"<tr><td><code>{html.escape(a)}</code></td>"
        f"<td>{', '.join(roles.get(a, []) or (['flagged contributor'] if a in slashed else []))}"
        f'</td><td style="text-align:right">{w}</td>'
        f'<td style="text-align:right">{w / split.pool:.2%}</td>{bond_cell(a)}</tr>'
        for a, w in listed.items()
    )
    total = sum(payouts.values())
    bond_total = (
        f'<td style="text-align:right"><b>{sum(slashed.values())}</b></td>' if slashed else ""
    )
    return (
        f"<div><b>{html.escape(title)}</b>: pool {split.pool} wei"
        f"<table><tr><th>payee</th><th>role</th><th>wei</th><th>share</th>{bond_head}</tr>"
        f"{rows}<tr><td><b>total</b></td><td></td>"
        f'<td style="text-align:right"><b>{total}</b></td><td></td>{bond_total}</tr>'
        "</table></div>"
    )
