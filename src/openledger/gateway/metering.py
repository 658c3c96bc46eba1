"""Metering: a finished request becomes a signed receipt, on disk before anyone is told.

Signing and writing run on one dedicated thread (the event loop never waits on an fsync;
receipts are written one transaction each, in the order requests finish).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openledger.attribution.rewards import SHARE_UNITS
from openledger.crypto import Account
from openledger.exceptions import ConfigError, CryptoError, LedgerError
from openledger.gateway.ledger import ReceiptLedger
from openledger.gateway.receipts import GatewayReceipt, SignedGatewayReceipt, canonical_hash
from openledger.serve import RequestOutput
from openledger.types import Address, Hash32

__all__ = ["Meter", "MeteredRequest", "load_operator_key", "new_key_file"]


def new_key_file(path: Path) -> Account:
    """Create a fresh account and write its key to ``path`` (mode 0600, fsync'd; folders
    0700).

    Raises:
        FileExistsError: ``path`` exists: a key file is never overwritten.
        OSError: It cannot be written.
    """
    account = Account.create()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("0x" + account.key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return account


def load_operator_key(path: Path) -> Account:
    """Read the operator's key from ``path``; create it (mode 0600) when missing.

    Raises:
        ConfigError: The file exists but holds no valid key, or cannot be written.
    """
    try:
        if not path.exists():
            return new_key_file(path)
        return Account.from_key(path.read_text(encoding="utf-8").strip())
    except FileExistsError:  # NOTE: another process created it first: read theirs
        return Account.from_key(path.read_text(encoding="utf-8").strip())
    except (OSError, CryptoError) as exc:
        raise ConfigError(f"operator key file {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class MeteredRequest:
    """What a receipt needs to know of an HTTP request besides its outputs.

    Attributes:
        request_id: Its 32-byte id (``0x``-hex).
        payer: The API key's payer account.
        adapters: ``{name: weight}`` of the adapters used (empty for the base model).
        adapter_ids: ``{name: manifest id}`` of those adapters.
        prompt_input: The request's ``messages`` or ``prompt``, as sent (hashed).
        prompt_texts: Per prompt, the text an adapter's training records would hold as
            their instruction (a chat's last user message; a completion's prompt): what
            the attribution worker attributes the answers to.
    """

    request_id: Hash32
    payer: Address
    adapters: Mapping[str, float]
    adapter_ids: Mapping[str, Hash32]
    prompt_input: Any
    prompt_texts: tuple[str, ...] = ()

    def answers(self, outputs: Mapping[int, tuple[int, RequestOutput]]) -> list[tuple[str, str]]:
        """``(prompt, answer)`` texts of the choices to attribute: none without prompt texts
        (the base model, or ``record_answers`` off), none for an empty answer."""
        if not self.adapters or not self.prompt_texts:
            return []
        pairs = []
        for index in sorted(outputs):
            prompt_index, out = outputs[index]
            texts = self.prompt_texts
            prompt = texts[prompt_index] if prompt_index < len(texts) else ""
            if prompt.strip() and out.text.strip():
                pairs.append((prompt, out.text))
        return pairs


class Meter:
    """Signs receipts as the operator and records them in the ledger.

    Args:
        ledger: Where receipts go.
        operator: The key that signs them.
        domain: Their EIP-712 domain.
        epoch_seconds: Length of a settlement window.
    """

    def __init__(
        self,
        ledger: ReceiptLedger,
        operator: Account,
        domain: dict[str, Any],
        epoch_seconds: int,
    ) -> None:
        self.ledger = ledger
        self.operator = operator
        self.domain = domain
        self.epoch_seconds = epoch_seconds
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openledger-ledger")

    def receipt(
        self,
        request: MeteredRequest,
        outputs: Mapping[int, tuple[int, RequestOutput]],
        now: float | None = None,
    ) -> GatewayReceipt:
        """Build the receipt of a request from its choices' last outputs.

        Args:
            request: The request.
            outputs: ``{choice index: (prompt index, last output)}``.
            now: Unix time it finished (default now).
        """
        timestamp = int(time.time() if now is None else now)
        names = sorted(request.adapters)
        prompts: dict[int, int] = {}
        for prompt_index, out in outputs.values():
            prompts[prompt_index] = len(out.prompt_token_ids)
        ordered = [outputs[i][1] for i in sorted(outputs)]
        reasons = [out.finish_reason for out in ordered]
        return GatewayReceipt(
            request_id=request.request_id,
            payer=request.payer,
            adapter_names=tuple(names),
            adapter_ids=tuple(request.adapter_ids[name] for name in names),
            adapter_weights=tuple(_share(request.adapters[name]) for name in names),
            prompt_tokens=sum(prompts.values()),
            completion_tokens=sum(len(out.token_ids) for out in ordered),
            prompt_hash=canonical_hash(request.prompt_input),
            answer_hash=canonical_hash([out.text for out in ordered]),
            timestamp=timestamp,
            epoch=timestamp // self.epoch_seconds,
            finish_reason=_finish_reason(reasons),
        )

    async def record(
        self, receipt: GatewayReceipt, answers: Sequence[tuple[str, str]] = ()
    ) -> SignedGatewayReceipt:
        """Sign ``receipt`` and write it (fsync'd) on the ledger's thread, with the
        ``(prompt, answer)`` texts the attribution worker will credit.

        Raises:
            LedgerError: The write failed or the request id is recorded already.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._sign_and_write, receipt, answers)

    def close(self) -> None:
        """Wait for writes in progress, then stop the ledger's thread."""
        self._writer.shutdown(wait=True)

    def _sign_and_write(
        self, receipt: GatewayReceipt, answers: Sequence[tuple[str, str]]
    ) -> SignedGatewayReceipt:
        signed = receipt.sign(self.operator, self.domain)
        self.ledger.record(signed, finish_reason=receipt.finish_reason, answers=answers)
        return signed


def _finish_reason(reasons: Sequence[str | None]) -> str:
    """``"abort"`` if any choice did not finish, else the last choice's reason."""
    if not reasons or any(r in (None, "abort") for r in reasons):
        return "abort"
    return str(reasons[-1])


def _share(weight: float) -> int:
    units = round(weight * SHARE_UNITS)
    if units < 1:
        raise LedgerError(f"adapter weight {weight} is below one share unit (1e-9)")
    return units
