"""Typed client of ``DataBonds``: contributor bonds per datanet, and penalties for flagged
records.

The flow, as calls::

    bonds.set_policy(datanet, 100 * OPEN, slash_bps=2_000, unbonding_delay=3 * 86_400,
                     sender=owner)                              # the datanet's owner
    bonds.approve_and_bond(datanet, 100 * OPEN, sender=contributor)
    bonds.is_bonded(datanet, contributor.address)               # checked before accepting data
    bonds.flag(datanet, record_hash, contributor.address, FlagKind.DUPLICATE, review_hash,
               sender=curator)                                  # the penalty goes to the treasury
    bonds.begin_unbonding(datanet, amount, sender=contributor)  # withdraw() after the delay

``review_hash`` is the EIP-712 digest of the validator's signed off-chain review (see
:func:`openledger.crypto.typed_data_digest`), so the penalty on chain and the review in the
datanet's log name the same decision.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass

from openledger.chain.bindings import Receipt, plain
from openledger.chain.rewards import TokenSpender
from openledger.crypto import Account, from_hex, to_checksum_address
from openledger.types import Address, Hash32, Wei

__all__ = ["BondInfo", "BondPolicy", "DataBondsClient", "FlagInfo", "FlagKind"]


class FlagKind(enum.IntEnum):
    """``DataBonds.FlagKind``: why a record was flagged."""

    NONE = 0
    MALICIOUS = 1
    DUPLICATE = 2


@dataclass(frozen=True, slots=True)
class BondPolicy:
    """A datanet's bond policy, set by its owner.

    Attributes:
        bond_amount: What a contributor must hold bonded (token wei; 0: no policy).
        unbonding_delay: Seconds between ``begin_unbonding`` and ``withdraw``.
        slash_bps: Share of a contributor's bond each flagged record takes (basis points).
    """

    bond_amount: Wei
    unbonding_delay: int
    slash_bps: int


@dataclass(frozen=True, slots=True)
class BondInfo:
    """A contributor's bond in one datanet.

    Attributes:
        bonded: Bonded tokens (count towards the policy's amount).
        unbonding: Tokens on their way out (still slashable).
        unbonding_ends: When ``unbonding`` may be withdrawn (Unix time).
    """

    bonded: Wei
    unbonding: Wei
    unbonding_ends: int


@dataclass(frozen=True, slots=True)
class FlagInfo:
    """A flagged record.

    Attributes:
        contributor: Whose record it is.
        kind: Malicious or duplicate.
        flagged_at: Block time of the flag.
        validator: Who flagged it (the datanet's owner or a curator).
        penalty: What it cost the contributor, in token wei.
        review_hash: The hash of the off-chain review behind it.
    """

    contributor: Address
    kind: FlagKind
    flagged_at: int
    validator: Address
    penalty: Wei
    review_hash: Hash32


class DataBondsClient(TokenSpender):
    """``DataBonds``: contributors' bonds per datanet, slashed for flagged records.

    Args:
        chain: The chain.
        address: The bonds contract.
        token: Client of the bond token (for approvals).
        sender: Default signer of transactions.
    """

    contract_name = "DataBonds"

    def set_policy(
        self,
        datanet: str,
        bond_amount: int,
        slash_bps: int,
        unbonding_delay: int,
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Set the datanet's bond, slash rate (<= :meth:`max_slash_bps`) and unbonding delay
        (1 hour to 365 days); the datanet's owner only."""
        args = (_id(datanet), bond_amount, slash_bps, unbonding_delay)
        return self._transact("setPolicy", *args, sender=sender)

    def bond(self, datanet: str, amount: int, *, sender: Account | None = None) -> Receipt:
        """Bond ``amount`` more for the sender (approve first; the datanet needs a policy)."""
        return self._transact("bond", _id(datanet), amount, sender=sender)

    def approve_and_bond(
        self, datanet: str, amount: int, *, sender: Account | None = None
    ) -> Receipt:
        """Approve ``amount`` if needed, then :meth:`bond`."""
        return self.bond(datanet, amount, sender=self._approved(amount, sender))

    def begin_unbonding(
        self, datanet: str, amount: int, *, sender: Account | None = None
    ) -> Receipt:
        """Move ``amount`` of the sender's bond to unbonding; the delay restarts."""
        return self._transact("beginUnbonding", _id(datanet), amount, sender=sender)

    def withdraw(self, datanet: str, *, sender: Account | None = None) -> Receipt:
        """Withdraw the sender's unbonded tokens once the delay is over."""
        return self._transact("withdraw", _id(datanet), sender=sender)

    def flag(
        self,
        datanet: str,
        record_hash: str,
        contributor: str,
        kind: FlagKind,
        review_hash: str,
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Flag a record as malicious or duplicate (the datanet's owner or a curator).

        The penalty is in the receipt's ``RecordFlagged`` event (``penalty``).
        """
        args = (
            _id(datanet),
            from_hex(record_hash, size=32, what="record_hash"),
            to_checksum_address(contributor),
            int(kind),
            from_hex(review_hash, size=32, what="review_hash"),
        )
        return self._transact("flag", *args, sender=sender)

    def policy(self, datanet: str) -> BondPolicy:
        """Return the datanet's policy (a zero ``bond_amount``: none set)."""
        amount, delay, rate = self._call("policy", _id(datanet))
        return BondPolicy(Wei(amount), int(delay), int(rate))

    def bond_of(self, datanet: str, contributor: str) -> BondInfo:
        """Return ``contributor``'s bond in the datanet."""
        bonded, unbonding, ends = self._call(
            "bondOf", _id(datanet), to_checksum_address(contributor)
        )
        return BondInfo(Wei(bonded), Wei(unbonding), int(ends))

    def is_bonded(self, datanet: str, contributor: str) -> bool:
        """Return whether ``contributor`` holds the datanet's bond (true without a policy)."""
        return bool(self._call("isBonded", _id(datanet), to_checksum_address(contributor)))

    def contribution_gate(self, datanet: str) -> Callable[[str], str | None]:
        """Return a check that admits only contributors holding the datanet's bond.

        Give it to an off-chain datanet (``Datanet.contribution_gate``): each contribution
        asks the chain whether its contributor :meth:`is_bonded` and is refused, before
        anything is stored, with the reason this check returns (``None`` admits).
        """
        datanet_id = plain(_id(datanet))

        def check(contributor: str) -> str | None:
            if self.is_bonded(datanet_id, contributor):
                return None
            need = self.policy(datanet_id).bond_amount
            held = self.bond_of(datanet_id, contributor).bonded
            return (
                f"{contributor} holds {held} wei of bond in datanet {datanet_id} on chain; "
                f"contributing needs {need} (DataBonds.bond)"
            )

        return check

    def get_flag(self, datanet: str, record_hash: str) -> FlagInfo | None:
        """Return the record's flag, or ``None`` if it was never flagged."""
        record = from_hex(record_hash, size=32, what="record_hash")
        contributor, kind, at, validator, penalty, review = self._call(
            "getFlag", _id(datanet), record
        )
        if kind == FlagKind.NONE:
            return None
        return FlagInfo(
            contributor=to_checksum_address(contributor),
            kind=FlagKind(kind),
            flagged_at=int(at),
            validator=to_checksum_address(validator),
            penalty=Wei(penalty),
            review_hash=plain(review),
        )

    def penalties(self, datanet: str | Collection[str], from_block: int = 0) -> dict[Address, Wei]:
        """Return the total penalty per contributor in one datanet or several (summed), from
        ``RecordFlagged`` logs since ``from_block`` (on a long-lived network pass the
        deployment block; an epoch passes the block after the previous epoch)."""
        ids = [datanet] if isinstance(datanet, str) else list(datanet)
        wanted = {plain(_id(d)) for d in ids}
        totals: dict[Address, Wei] = {}
        if not wanted:
            return totals
        for args in self._logs("RecordFlagged", from_block):
            if args["datanetId"] in wanted:
                who = to_checksum_address(args["contributor"])
                totals[who] = Wei(totals.get(who, 0) + int(args["penalty"]))
        return totals

    def total_bonded(self) -> Wei:
        """Return the sum of all bonded and unbonding tokens."""
        return Wei(int(self._call("totalBonded")))

    def max_slash_bps(self) -> int:
        """Return the highest slash rate a datanet may set (basis points)."""
        return int(self._call("maxSlashBps"))

    def treasury(self) -> Address:
        """Return where penalties go."""
        return to_checksum_address(self._call("treasury"))

    def set_max_slash_bps(self, bps: int, *, sender: Account | None = None) -> Receipt:
        """Change the highest slash rate datanets may set (admin only)."""
        return self._transact("setMaxSlashBps", bps, sender=sender)

    def set_treasury(self, treasury: str, *, sender: Account | None = None) -> Receipt:
        """Change where penalties go (admin only)."""
        return self._transact("setTreasury", to_checksum_address(treasury), sender=sender)


def _id(value: bytes | str) -> bytes:
    return from_hex(value, size=32, what="datanet id")
