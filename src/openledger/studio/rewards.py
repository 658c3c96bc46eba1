"""The Rewards tab's state: the chain, the protocol, attributed answers and epochs.

The protocol is deployed on first use. On the embedded chain (the default) its state
lasts as long as the Studio process; give ``chain_url`` to settle on a node instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from openledger.exceptions import AttributionInputError, DataNotFoundError

__all__ = ["GAS_WEI", "PendingAnswer", "Rewards"]

GAS_WEI = 10**17
"""Native coin given to a local account before it sends its own claim on a dev chain."""


@dataclass(frozen=True)
class PendingAnswer:
    """An attributed answer waiting for the next epoch.

    Attributes:
        report: Its :class:`~openledger.attribution.AttributionReport`.
        tokens: Tokens served (its weight in the epoch).
        adapter: The adapter that answered.
    """

    report: Any
    tokens: int
    adapter: str


class Rewards:
    """Attributed answers, settled epochs and claims on one chain.

    Args:
        chain_url: A JSON-RPC URL, or None for the embedded chain.
    """

    def __init__(self, chain_url: str | None = None) -> None:
        self.chain_url = chain_url
        self.pending: list[PendingAnswer] = []
        self.epochs: dict[int, Any] = {}
        self._chain: Any = None
        self._protocol: Any = None
        self._lock = threading.RLock()

    def protocol(self) -> Any:
        """The protocol, connected and deployed on first use."""
        from openledger.chain import connect

        with self._lock:
            if self._protocol is None:
                self._chain = connect(self.chain_url)
                self._protocol = self._chain.deploy_protocol()
            return self._protocol

    def add(self, report: Any, tokens: int, adapter: str) -> None:
        """Queue an attributed answer for the next epoch."""
        with self._lock:
            self.pending.append(PendingAnswer(report, tokens, adapter))

    def settle(self, pool_wei: int) -> Any:
        """Settle the waiting answers in one epoch of ``pool_wei``; returns the Epoch.

        Raises:
            AttributionInputError: No answers waiting, a bad pool, no positive share;
                the answers stay waiting then.
        """
        from openledger.attribution import settle

        with self._lock:
            if not self.pending:
                raise AttributionInputError(
                    "no attributed answers yet: attribute an answer in the Chat tab first"
                )
            protocol = self.protocol()
            reports = [p.report for p in self.pending]
            tokens = [p.tokens for p in self.pending]
            epoch = settle(reports, pool_wei=pool_wei, protocol=protocol, tokens=tokens)
            self.epochs[epoch.epoch_id] = epoch
            self.pending = []
            return epoch

    def claim(self, epoch_id: int, address: str, account: Any | None) -> int:
        """Claim ``address``'s payout of an epoch; returns its token balance afterwards.

        A local ``account`` sends its own claim (given gas first); any other address is
        relayed by the chain's default account, the tokens still going to ``address``.

        Raises:
            DataNotFoundError: No such epoch in this Studio session.
            ContractRevertError: Already claimed, or nothing to claim.
        """
        with self._lock:
            epoch = self.epochs.get(epoch_id)
            if epoch is None:
                raise DataNotFoundError(f"no epoch {epoch_id} was settled in this Studio")
            protocol = self.protocol()
            if account is not None:
                self._chain.fund(account.address, GAS_WEI)
                epoch.claim(account)
            else:
                epoch.claim(address, sender=self._chain.default_account)
            return int(protocol.token.balance_of(address))

    def rows(self, names: dict[str, str]) -> list[dict[str, Any]]:
        """Every epoch's payees with amount, claimed state and token balance."""
        with self._lock:
            if self._protocol is None:
                return []
            protocol = self._protocol
            found = []
            for epoch_id, epoch in sorted(self.epochs.items()):
                payees = [
                    {
                        "address": address,
                        "name": names.get(address, ""),
                        "amount": str(amount),
                        "claimed": protocol.rewards.is_claimed(epoch_id, address),
                        "balance": str(protocol.token.balance_of(address)),
                    }
                    for address, amount in sorted(epoch.split.payouts.items())
                ]
                found.append({"epoch_id": epoch_id, "root": epoch.tree.root, "payees": payees})
            return found
