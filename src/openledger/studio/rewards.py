"""The Rewards tab's state: the Studio's receipt ledger, its epochs and claims on one chain.

Every answer of the Chat tab is metered the way the gateway meters a request: a
:class:`~openledger.gateway.GatewayReceipt` (the adapters and their weights, token counts,
hashes of the question and the answer), signed by the Studio's operator key and written
to a :class:`~openledger.gateway.ReceiptLedger` in the Studio's folder::

    HOME/rewards/ledger.sqlite    receipts, attributions, epochs (fsync'd SQLite)
    HOME/rewards/operator.key     the key that signs them (0600)
    HOME/rewards/epochs.json      each epoch's data-bond penalties, for the page
    HOME/rewards/models.json      adapters registered on the chain: model id, registrant

"Attribute this answer" writes the answer's attribution into the same ledger
(:func:`~openledger.gateway.attribution_worker.record_attributions`), and *Settle* pays
the attributed receipts with :func:`~openledger.gateway.settle_ledger`, which persists
an epoch before posting it and settles each receipt once, across restarts; claims come
with their proofs from :func:`~openledger.gateway.claims_of`.

The protocol is deployed on first use. On the embedded chain (the default) the chain
lasts as long as the Studio process: receipts and epochs stay in the ledger after a
restart, but epochs posted on a chain that is gone can no longer be claimed (the page
says so). Give ``chain_url`` to settle on a node that outlives the Studio.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openledger.exceptions import AttributionInputError, ConfigError, DataNotFoundError

__all__ = ["EPOCH_SECONDS", "GAS_WEI", "AnswerPart", "Rewards"]

GAS_WEI = 10**17
"""Native coin given to a local account before it sends its own claim on a dev chain."""

EPOCH_SECONDS = 3600
"""The ledger's window length (settling pays every window up to the current one)."""


@dataclass(frozen=True)
class AnswerPart:
    """One adapter's part in an answer.

    Attributes:
        name: The adapter's name in the Studio.
        adapter_id: Its manifest id.
        weight: Its share of the answer (the weights of an answer sum to one).
    """

    name: str
    adapter_id: str
    weight: float


class Rewards:
    """The Studio's receipt ledger, and its epochs and claims on one chain.

    Args:
        folder: Where the ledger, the operator key and the epochs' notes live (created).
        chain_url: A JSON-RPC URL, or None for the embedded chain.
    """

    def __init__(self, folder: Path, chain_url: str | None = None) -> None:
        from openledger.gateway import ReceiptLedger, load_operator_key

        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.chain_url = chain_url
        self.ledger = ReceiptLedger(folder / "ledger.sqlite")
        self.operator = load_operator_key(folder / "operator.key")
        self._chain: Any = None
        self._protocol: Any = None
        self._pinned = False
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the ledger (everything in it is on disk already)."""
        self.ledger.close()

    # -- chain -------------------------------------------------------------------------------

    def chain(self) -> Any:
        """The chain, connected on first use."""
        from openledger.chain import connect

        with self._lock:
            if self._chain is None:
                self._chain = connect(self.chain_url)
            return self._chain

    def protocol(self) -> Any:
        """The protocol, deployed on first use."""
        with self._lock:
            if self._protocol is None:
                self._protocol = self.chain().deploy_protocol()
            return self._protocol

    def _pin(self) -> None:
        """Pin the operator, window length and receipt domain on the ledger's first use.

        Raises:
            ConfigError: The ledger was written for another chain or operator (named).
        """
        from openledger.gateway import receipt_domain
        from openledger.gateway.ledger import pin_settings

        with self._lock:
            if not self._pinned:
                domain = receipt_domain(self.chain().chain_id)
                pin_settings(self.ledger, self.operator.address, EPOCH_SECONDS, domain)
                self._pinned = True

    # -- models ------------------------------------------------------------------------------

    def register_model(self, adapter: Any, account: Any | None) -> dict[str, Any]:
        """Register a finished adapter in the chain's ModelRegistry; returns its model id
        and registrant.

        ``account`` (a local account, given gas on a dev chain) registers it and owns the
        model; without one, the chain's default account does.

        Raises:
            ContractRevertError: The chain refused it (the same manifest registered by the
                same account already, say).
        """
        with self._lock:
            protocol = self.protocol()
            manifest = adapter.model_manifest()
            sender = account if account is not None else self.chain().default_account
            if account is not None:
                self.chain().fund(account.address, GAS_WEI)
            protocol.models.register_model(manifest, sender=sender)
            model_id = str(protocol.models.model_id(manifest, sender.address))
            return {
                "model_id": model_id,
                "registrant": str(sender.address),
                "chain_id": int(protocol.chain.chain_id),
            }

    def note_model(self, name: str, registration: dict[str, Any]) -> None:
        """Remember the registration of the adapter called ``name`` (for the page)."""
        with self._lock:
            notes = self.models()
            notes[name] = registration
            _write_json(self.folder / "models.json", notes)

    def models(self) -> dict[str, Any]:
        """The registrations noted so far, by adapter name."""
        return _read_json(self.folder / "models.json")

    # -- receipts and attributions -----------------------------------------------------------

    def record(
        self,
        parts: list[AnswerPart],
        *,
        question: str,
        answer: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str = "stop",
    ) -> str:
        """Write the signed receipt of one answer; returns its request id.

        Raises:
            ConfigError: The ledger belongs to another chain or operator.
            LedgerError: It cannot be written.
        """
        from openledger.attribution import SHARE_UNITS
        from openledger.gateway import GatewayReceipt, canonical_hash, receipt_domain

        self._pin()
        now = int(time.time())
        ordered = sorted(parts, key=lambda p: p.name)
        receipt = GatewayReceipt(
            request_id="0x" + os.urandom(32).hex(),
            payer=self.operator.address,
            adapter_names=tuple(p.name for p in ordered),
            adapter_ids=tuple(p.adapter_id for p in ordered),
            adapter_weights=tuple(int(p.weight * SHARE_UNITS) for p in ordered),
            prompt_tokens=max(0, prompt_tokens),
            completion_tokens=max(0, completion_tokens),
            prompt_hash=canonical_hash(question),
            answer_hash=canonical_hash(answer),
            timestamp=now,
            epoch=now // EPOCH_SECONDS,
            finish_reason=finish_reason,
        )
        domain = receipt_domain(self.chain().chain_id)
        self.ledger.record(receipt.sign(self.operator, domain), finish_reason=finish_reason)
        return str(receipt.request_id)

    def check_answer(self, request_id: str, adapter: str, question: str, answer: str) -> Any:
        """The receipt of an answer about to be attributed, checked.

        Raises:
            DataNotFoundError: No receipt with that id.
            ConfigError: The texts are not the ones metered, the adapter did not answer,
                or the answer was settled or attributed already.
        """
        from openledger.gateway import canonical_hash

        signed = self.ledger.receipt(request_id)
        if signed is None:
            raise DataNotFoundError(f"no answer {request_id} in the Studio's ledger")
        receipt = signed.receipt
        if canonical_hash(question) != receipt.prompt_hash:
            raise ConfigError(f"the question is not the one answer {request_id} was given")
        if canonical_hash(answer) != receipt.answer_hash:
            raise ConfigError(f"the answer is not the one metered as {request_id}")
        if adapter not in receipt.adapter_names:
            raise ConfigError(f"adapter {adapter!r} did not take part in answer {request_id}")
        settled = self.ledger.read("SELECT 1 FROM settled WHERE request_id = ?", (request_id,))
        if settled:
            raise ConfigError(
                f"answer {request_id} was settled already; an attribution written now would "
                "never be paid (attribute answers before settling their epoch)"
            )
        adapter_id = receipt.adapter_ids[receipt.adapter_names.index(adapter)]
        done = self.ledger.read(
            "SELECT 1 FROM attributions WHERE request_id = ? AND adapter_id = ?",
            (request_id, adapter_id),
        )
        if done:
            raise ConfigError(f"answer {request_id} is attributed to {adapter!r} already")
        return receipt

    def credit(self, request_id: str, manifest: Any, report: Any) -> None:
        """Write the attribution ``report`` of one adapter's part of an answer."""
        from openledger.gateway.attribution_policy import averaged
        from openledger.gateway.attribution_worker import record_attributions
        from openledger.types import Hash32

        rows = [(Hash32(request_id), averaged([report]))]
        record_attributions(self.ledger, manifest, rows, str(report.method))

    def counts(self) -> dict[str, int]:
        """Answers metered, not settled yet, and attributed among those."""
        (total,) = self.ledger.read("SELECT COUNT(*) FROM receipts")[0]
        (open_,) = self.ledger.read(
            "SELECT COUNT(*) FROM receipts WHERE request_id NOT IN (SELECT request_id FROM settled)"
        )[0]
        return {"answers": int(total), "unsettled": int(open_), "attributed": self._attributed()}

    def _attributed(self) -> int:
        rows = self.ledger.read(
            "SELECT COUNT(DISTINCT request_id) FROM attributions WHERE request_id NOT IN "
            "(SELECT request_id FROM settled)"
        )
        return int(rows[0][0])

    # -- epochs and claims -------------------------------------------------------------------

    def settle(self, pool_wei: int) -> Any:
        """Pay the attributed answers not settled yet in one epoch of ``pool_wei``.

        Every receipt is settled once: answers without an attribution are closed with
        nothing owed, and a second settle of the same answers finds nothing to pay.

        Returns:
            The :class:`~openledger.gateway.Settlement`.

        Raises:
            AttributionInputError: No attributed answer is waiting (nothing is changed).
            SettlementError: An interrupted epoch cannot be resolved on this chain.
        """
        from openledger.gateway import settle_ledger

        with self._lock:
            if not self._attributed():
                raise AttributionInputError(
                    "no attributed answers wait for an epoch: attribute an answer in the Chat "
                    "tab first"
                )
            self._pin()
            protocol = self.protocol()
            settlement = settle_ledger(
                self.ledger,
                protocol,
                operator=self.operator,
                pool_wei=pool_wei,
                through_window=int(time.time()) // EPOCH_SECONDS,
                # NOTE: the Studio's datanets live in its folder, not in the chain's registry
                require_published_snapshots=False,
            )
            if settlement.epoch_id is not None:
                self._note(settlement.epoch_id, settlement.bond_penalties)
            return settlement

    def _notes(self) -> dict[str, Any]:
        return _read_json(self.folder / "epochs.json")

    def _note(self, epoch_id: int, bond_penalties: dict[Any, int]) -> None:
        notes = self._notes()
        notes[str(epoch_id)] = {
            "bond_penalties": {str(a): str(w) for a, w in bond_penalties.items()}
        }
        _write_json(self.folder / "epochs.json", notes)

    def _live(self, epoch_id: int, root: str, chain_id: int, contract: str) -> bool:
        """Whether the ledger's epoch is posted with its root on this Studio's chain."""
        from openledger.exceptions import ContractRevertError

        protocol = self.protocol()
        if (chain_id, contract) != (protocol.chain.chain_id, protocol.rewards.address):
            return False
        try:
            return bool(protocol.rewards.get_epoch(epoch_id).root.lower() == root.lower())
        except ContractRevertError:
            return False

    def claim(self, epoch_id: int, address: str, account: Any | None) -> int:
        """Claim ``address``'s payout of an epoch; returns its token balance afterwards.

        A local ``account`` sends its own claim (given gas first); any other address is
        relayed by the chain's default account, the tokens still going to ``address``.

        Raises:
            DataNotFoundError: The ledger owes ``address`` nothing unclaimed in that epoch.
            ConfigError: The epoch was posted on a chain this Studio no longer reaches.
            ContractRevertError: The chain refused the claim.
        """
        from openledger.gateway import claims_of

        with self._lock:
            protocol = self.protocol()
            found = [c for c in claims_of(self.ledger, address) if c.epoch_id == epoch_id]
            if not found:
                raise DataNotFoundError(f"epoch {epoch_id} owes {address} nothing in this ledger")
            claim = found[0]
            rows = self.ledger.read(
                "SELECT chain_id, contract FROM epochs WHERE epoch_id = ?", (epoch_id,)
            )
            if not self._live(epoch_id, claim.root, int(rows[0][0]), str(rows[0][1])):
                raise ConfigError(
                    f"epoch {epoch_id} was posted on a chain this Studio no longer reaches "
                    "(the embedded chain ends with the process); it cannot be claimed here"
                )
            if protocol.rewards.is_claimed(epoch_id, claim.account):
                raise ConfigError(f"{address} has claimed epoch {epoch_id} already")
            if account is not None:
                self.chain().fund(account.address, GAS_WEI)
                protocol.rewards.claim(epoch_id, claim.amount, claim.proof, sender=account)
            else:
                protocol.rewards.claim_for(
                    epoch_id,
                    claim.account,
                    claim.amount,
                    claim.proof,
                    sender=self.chain().default_account,
                )
            return int(protocol.token.balance_of(claim.account))

    def balances(self, accounts: dict[str, str]) -> list[dict[str, str]]:
        """Token balances of the local accounts (``{name: address}``) once the protocol is
        deployed (empty before: the page does not deploy it just to show zeros)."""
        with self._lock:
            if self._protocol is None:
                return []
            token = self._protocol.token
            return [
                {"name": name, "address": address, "balance": str(token.balance_of(address))}
                for name, address in sorted(accounts.items())
            ]

    def rows(self, names: dict[str, str]) -> list[dict[str, Any]]:
        """Every posted epoch's payees with amount, claimed state and token balance."""
        with self._lock:
            rows = self.ledger.read(
                "SELECT epoch_id, chain_id, contract, root, body FROM epochs "
                "WHERE state = 'posted' ORDER BY epoch_id"
            )
            if not rows:
                return []
            protocol = self.protocol()
            notes = self._notes()
            found = []
            for epoch_id, chain_id, contract, root, body in rows:
                live = self._live(int(epoch_id), str(root), int(chain_id), str(contract))
                payouts = json.loads(body)["payouts"]
                payees = []
                for address, amount in sorted(payouts.items()):
                    claimed = live and protocol.rewards.is_claimed(epoch_id, address)
                    payees.append(
                        {
                            "address": address,
                            "name": names.get(address, ""),
                            "amount": str(amount),
                            "claimed": bool(claimed),
                            "balance": str(protocol.token.balance_of(address)),
                        }
                    )
                penalties = notes.get(str(epoch_id), {}).get("bond_penalties", {})
                found.append(
                    {
                        "epoch_id": int(epoch_id),
                        "root": root,
                        "live": live,
                        "payees": payees,
                        "bond_penalties": [
                            {"address": a, "name": names.get(a, ""), "amount": w}
                            for a, w in sorted(penalties.items())
                        ],
                    }
                )
            return found


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    found: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace ``path`` in one step (a reader sees the old file or the new one)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)
