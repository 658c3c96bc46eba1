"""Typed clients of ``AttributionRewards`` and the ERC-20 reward token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openledger.chain.bindings import ContractClient, Receipt, plain
from openledger.chain.encoding import RewardTree, reward_leaf
from openledger.crypto import Account, from_hex, keccak256, to_checksum_address
from openledger.types import Address, Hash32, Wei

if TYPE_CHECKING:
    from openledger.chain.client import Chain

__all__ = [
    "CHECKPOINT_GAS",
    "MINTER_ROLE",
    "SETTLER_ROLE",
    "AccessControlled",
    "AttributionRewardsClient",
    "EpochInfo",
    "OpenTokenClient",
    "TokenSpender",
]

SETTLER_ROLE = keccak256(b"SETTLER_ROLE")
"""``AttributionRewards.SETTLER_ROLE``: may post epochs."""

MINTER_ROLE = keccak256(b"MINTER_ROLE")
"""``OpenToken.MINTER_ROLE``: may mint, up to the token's cap."""

CHECKPOINT_GAS = 50_000
"""Gas added to the estimate of a transaction that writes two vote checkpoints (a claim,
a delegation).

NOTE: a checkpoint of the timestamp the last one has is rewritten in place (~3k), one of a
later timestamp takes a new slot (~25k). A node estimates at the current block's timestamp,
which the next block may not share, so an estimate can miss two new slots."""


@dataclass(frozen=True, slots=True)
class EpochInfo:
    """A posted reward epoch as stored on chain."""

    root: Hash32
    remaining: Wei
    deadline: int
    swept: bool
    total: Wei

    @property
    def claimed(self) -> Wei:
        """How much has been claimed (``total - remaining`` until swept)."""
        return Wei(self.total - self.remaining) if not self.swept else Wei(0)


def _proof(proof: Sequence[bytes | str]) -> list[bytes]:
    return [from_hex(p, size=32, what="proof element") for p in proof]


class AccessControlled(ContractClient):
    """Role reads and grants of a contract using OpenZeppelin ``AccessControl``.

    The default admin moves in two steps after a delay
    (``AccessControlDefaultAdminRules``); other roles are granted directly by it.
    """

    def grant_role(self, role: bytes, account: str, *, sender: Account | None = None) -> Receipt:
        """Grant a role (its admin only), e.g. :data:`SETTLER_ROLE` or :data:`MINTER_ROLE`."""
        return self._transact("grantRole", role, to_checksum_address(account), sender=sender)

    def revoke_role(self, role: bytes, account: str, *, sender: Account | None = None) -> Receipt:
        """Revoke a role (its admin only)."""
        return self._transact("revokeRole", role, to_checksum_address(account), sender=sender)

    def has_role(self, role: bytes, account: str) -> bool:
        """Return whether ``account`` holds ``role``."""
        return bool(self._call("hasRole", role, to_checksum_address(account)))

    def default_admin(self) -> Address:
        """Return the current default admin."""
        return to_checksum_address(self._call("defaultAdmin"))


class OpenTokenClient(AccessControlled):
    """An ERC-20 token (``OpenToken`` on local deployments; any ERC-20 works for reads,
    transfers and approvals)."""

    contract_name = "OpenToken"

    def cap(self) -> Wei:
        """Return the most tokens that can ever exist (``OpenToken`` only)."""
        return Wei(int(self._call("cap")))

    def balance_of(self, account: str) -> Wei:
        """Return ``account``'s token balance."""
        return Wei(int(self._call("balanceOf", to_checksum_address(account))))

    def total_supply(self) -> Wei:
        """Return the total supply."""
        return Wei(int(self._call("totalSupply")))

    def allowance(self, owner: str, spender: str) -> Wei:
        """Return how much ``spender`` may pull from ``owner``."""
        return Wei(
            int(self._call("allowance", to_checksum_address(owner), to_checksum_address(spender)))
        )

    def approve(self, spender: str, amount: int, *, sender: Account | None = None) -> Receipt:
        """Allow ``spender`` to pull ``amount`` from the sender."""
        return self._transact("approve", to_checksum_address(spender), amount, sender=sender)

    def transfer(self, to: str, amount: int, *, sender: Account | None = None) -> Receipt:
        """Send ``amount`` tokens to ``to``."""
        return self._transact("transfer", to_checksum_address(to), amount, sender=sender)

    def mint(self, to: str, amount: int, *, sender: Account | None = None) -> Receipt:
        """Create ``amount`` new tokens for ``to`` (``MINTER_ROLE`` only; ``ERC20ExceededCap``
        past the cap)."""
        return self._transact("mint", to_checksum_address(to), amount, sender=sender)


class TokenSpender(AccessControlled):
    """A contract that pulls the protocol's token from its users (rewards, agents, bonds).

    Args:
        chain: The chain.
        address: The contract.
        token: Client of the token it pulls (for approvals).
        sender: Default signer of transactions.
    """

    def __init__(
        self, chain: Chain, address: str, token: OpenTokenClient, sender: Account | None = None
    ) -> None:
        super().__init__(chain, address, sender)
        self.token = token

    def _approved(self, amount: int, sender: Account | None) -> Account:
        """Approve this contract for ``amount`` of the sender's tokens unless it already may
        pull that much; return the sender."""
        owner = sender or self.sender or self.chain.default_account
        if self.token.allowance(owner.address, self.address) < amount:
            self.token.approve(self.address, amount, sender=owner)
        return owner


class AttributionRewardsClient(TokenSpender):
    """``AttributionRewards``: funded reward epochs claimed with Merkle proofs.

    An epoch's deadline leaves at least :meth:`min_claim_window` seconds to claim; after it
    anyone may :meth:`sweep` the rest, which always goes to the :meth:`treasury`.

    Args:
        chain: The chain.
        address: The rewards contract.
        token: Client of the token epochs are paid in.
        sender: Default signer of transactions.
    """

    contract_name = "AttributionRewards"

    @staticmethod
    def reward_leaf(account: str, amount: int) -> Hash32:
        """Return the leaf of one payout (computed off chain, same as on chain)."""
        return reward_leaf(account, amount)

    def post_epoch(
        self,
        epoch_id: int,
        root: bytes | str,
        total: int,
        deadline: int,
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Post an epoch and pull ``total`` from the sender (settler; approve first).

        ``deadline`` must be at least :meth:`min_claim_window` seconds after the block that
        includes the transaction (else ``ClaimWindowTooShort``).
        """
        args = (epoch_id, from_hex(root, size=32, what="root"), total, deadline)
        return self._transact("postEpoch", *args, sender=sender)

    def claim(
        self,
        epoch_id: int,
        amount: int,
        proof: Sequence[bytes | str],
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Claim the sender's ``amount`` of the epoch."""
        args = (epoch_id, amount, _proof(proof))
        return self._transact("claim", *args, sender=sender, extra_gas=CHECKPOINT_GAS)

    def claim_for(
        self,
        epoch_id: int,
        account: str,
        amount: int,
        proof: Sequence[bytes | str],
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Relay ``account``'s claim; the tokens go to ``account``, the sender pays gas."""
        args = (epoch_id, to_checksum_address(account), amount, _proof(proof))
        return self._transact("claimFor", *args, sender=sender, extra_gas=CHECKPOINT_GAS)

    def sweep(self, epoch_id: int, *, sender: Account | None = None) -> Receipt:
        """Send an expired epoch's unclaimed rest to the treasury (anyone may call it)."""
        return self._transact("sweep", epoch_id, sender=sender)

    def treasury(self) -> Address:
        """Return where swept rewards go."""
        return to_checksum_address(self._call("treasury"))

    def min_claim_window(self) -> int:
        """Return the shortest claim window of new epochs, in seconds."""
        return int(self._call("minClaimWindow"))

    def set_treasury(self, treasury: str, *, sender: Account | None = None) -> Receipt:
        """Change where swept rewards go (admin only)."""
        return self._transact("setTreasury", to_checksum_address(treasury), sender=sender)

    def set_min_claim_window(self, seconds: int, *, sender: Account | None = None) -> Receipt:
        """Change the shortest claim window (admin only; 1 hour to 365 days)."""
        return self._transact("setMinClaimWindow", seconds, sender=sender)

    def get_epoch(self, epoch_id: int) -> EpochInfo:
        """Return an epoch; raises ``ContractRevertError`` (``UnknownEpoch``) if never posted."""
        root, remaining, deadline, swept, total = self._call("getEpoch", epoch_id)
        return EpochInfo(plain(root), Wei(remaining), deadline, swept, Wei(total))

    def is_claimed(self, epoch_id: int, account: str) -> bool:
        """Return whether ``account`` has claimed from the epoch."""
        return bool(self._call("isClaimed", epoch_id, to_checksum_address(account)))

    def posted_epoch_ids(self, from_block: int = 0) -> list[int]:
        """Return the ids of the epochs posted since ``from_block``, in posting order.

        Reads ``EpochPosted`` logs; on a long-lived network pass the deployment block.
        """
        return [int(args["epochId"]) for args in self._logs("EpochPosted", from_block)]

    def post_reward_tree(
        self, epoch_id: int, tree: RewardTree, deadline: int, *, sender: Account | None = None
    ) -> Receipt:
        """Approve the tree's total if needed, then post the epoch with its root and total."""
        settler = self._approved(tree.total, sender)
        return self.post_epoch(epoch_id, tree.root, tree.total, deadline, sender=settler)

    def claim_from_tree(
        self,
        epoch_id: int,
        tree: RewardTree,
        account: Account | str,
        *,
        sender: Account | None = None,
    ) -> Receipt:
        """Claim ``account``'s payout with its proof from ``tree``.

        An :class:`Account` claims for itself (unless ``sender`` is given); an address is
        relayed with ``claimFor`` by ``sender`` (or the default sender).
        """
        address: Address = (
            account.address if isinstance(account, Account) else to_checksum_address(account)
        )
        amount, proof = tree.amount_of(address), tree.proof(address)
        if isinstance(account, Account) and sender is None:
            return self.claim(epoch_id, amount, proof, sender=account)
        return self.claim_for(epoch_id, address, amount, proof, sender=sender)
