"""The gateway's usage receipts: what one HTTP request consumed, signed by the operator.

A receipt is EIP-712 typed data, signed by the gateway's operator key::

    GatewayReceipt(bytes32 requestId, address payer, bytes32[] adapterIds,
                   uint256[] adapterWeights, uint256 promptTokens, uint256 completionTokens,
                   bytes32 promptHash, bytes32 answerHash, uint64 timestamp, uint64 epoch)

in the domain ``("OpenLedger Gateway", "1", chainId[, verifyingContract])``. Adapter ids are
the adapters' manifest ids (keccak256 of their weights file), sorted by adapter name, with
weights in :data:`~openledger.attribution.SHARE_UNITS` (a single adapter weighs one share).
``promptHash`` and ``answerHash`` are keccak256 of the canonical JSON (sorted keys, no
spaces, UTF-8) of the request's ``messages`` / ``prompt`` and of the list of choice texts.
Settlement later turns receipts, with attribution, into
:class:`~openledger.attribution.UsageReceipt` s of contributors.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from openledger.attribution.rewards import SHARE_UNITS
from openledger.crypto import (
    Account,
    TypedData,
    eip712_domain,
    keccak256_hex,
    recover_typed_data,
    to_checksum_address,
    typed_data,
)
from openledger.exceptions import CryptoError, ReceiptError
from openledger.types import Address, Hash32, to_hash32

__all__ = [
    "GATEWAY_RECEIPT_TYPES",
    "GatewayReceipt",
    "SignedGatewayReceipt",
    "canonical_hash",
    "receipt_domain",
]

GATEWAY_RECEIPT_TYPES = {
    "GatewayReceipt": [
        ("requestId", "bytes32"),
        ("payer", "address"),
        ("adapterIds", "bytes32[]"),
        ("adapterWeights", "uint256[]"),
        ("promptTokens", "uint256"),
        ("completionTokens", "uint256"),
        ("promptHash", "bytes32"),
        ("answerHash", "bytes32"),
        ("timestamp", "uint64"),
        ("epoch", "uint64"),
    ]
}
"""EIP-712 struct of a gateway receipt."""

ZERO_ADDRESS = Address("0x0000000000000000000000000000000000000000")


def receipt_domain(chain_id: int, verifying_contract: str | None = None) -> dict[str, Any]:
    """Return the EIP-712 domain gateway receipts are signed in."""
    return eip712_domain(
        "OpenLedger Gateway", "1", chain_id=chain_id, verifying_contract=verifying_contract
    )


def canonical_hash(value: Any) -> Hash32:
    """keccak256 of ``value``'s canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Hash32(keccak256_hex(text.encode("utf-8")))


class GatewayReceipt(BaseModel):
    """What one served HTTP request consumed (see the module docstring for the encoding).

    Attributes:
        request_id: The request's 32-byte id; also the receipt's id.
        payer: The API key's payer account.
        adapter_names: Names the adapters were served under (not signed; for people).
        adapter_ids: Their manifest ids, sorted by name.
        adapter_weights: Their weights in ``SHARE_UNITS``.
        prompt_tokens: Prompt tokens computed (each prompt once).
        completion_tokens: Tokens generated over all choices.
        prompt_hash: Hash of the request's prompt input.
        answer_hash: Hash of the choices' texts.
        timestamp: Unix seconds when the request finished.
        epoch: The settlement window: ``timestamp // epoch_seconds``.
        finish_reason: ``"stop"``, ``"length"`` or ``"abort"`` (the last choice's; not signed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: Hash32
    payer: Address
    adapter_names: tuple[str, ...] = ()
    adapter_ids: tuple[Hash32, ...] = ()
    adapter_weights: tuple[int, ...] = ()
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    prompt_hash: Hash32
    answer_hash: Hash32
    timestamp: int = Field(ge=0, lt=2**64)
    epoch: int = Field(ge=0, lt=2**64)
    finish_reason: str = "stop"

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ReceiptError(f"invalid gateway receipt: {exc}") from None
        lengths = {len(self.adapter_names), len(self.adapter_ids), len(self.adapter_weights)}
        if len(lengths) != 1:
            raise ReceiptError("give one id and one weight per adapter name")

    @field_validator("request_id", "prompt_hash", "answer_hash", mode="before")
    @classmethod
    def _hash(cls, value: Any) -> str:
        return to_hash32(value)

    @field_validator("adapter_ids", mode="before")
    @classmethod
    def _hashes(cls, value: Any) -> tuple[str, ...]:
        return tuple(to_hash32(v, what="adapter id") for v in value)

    @field_validator("payer", mode="before")
    @classmethod
    def _address(cls, value: Any) -> str:
        return to_checksum_address(value)

    @property
    def receipt_id(self) -> Hash32:
        """The receipt's id: its request id."""
        return self.request_id

    @property
    def adapters(self) -> dict[str, float]:
        """``{adapter name: weight}`` (weights as fractions of one share)."""
        pairs = zip(self.adapter_names, self.adapter_weights, strict=True)
        return {name: weight / SHARE_UNITS for name, weight in pairs}

    def typed_data(self, domain: dict[str, Any]) -> TypedData:
        """Return the EIP-712 payload of this receipt in ``domain``."""
        message = {
            "requestId": bytes.fromhex(self.request_id[2:]),
            "payer": self.payer,
            "adapterIds": [bytes.fromhex(a[2:]) for a in self.adapter_ids],
            "adapterWeights": list(self.adapter_weights),
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "promptHash": bytes.fromhex(self.prompt_hash[2:]),
            "answerHash": bytes.fromhex(self.answer_hash[2:]),
            "timestamp": self.timestamp,
            "epoch": self.epoch,
        }
        return typed_data(domain, GATEWAY_RECEIPT_TYPES, "GatewayReceipt", message)

    def sign(self, operator: Account, domain: dict[str, Any]) -> SignedGatewayReceipt:
        """Sign this receipt as ``operator`` in ``domain``."""
        signature = operator.sign_typed_data(self.typed_data(domain))
        return SignedGatewayReceipt(receipt=self, signature="0x" + signature.hex())


class SignedGatewayReceipt(BaseModel):
    """A gateway receipt with the operator's 65-byte EIP-712 signature (``0x``-hex)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    receipt: GatewayReceipt
    signature: str

    def signer(self, domain: dict[str, Any]) -> Address:
        """Return who signed the receipt in ``domain``.

        Raises:
            ReceiptError: The signature is malformed.
        """
        try:
            return recover_typed_data(self.receipt.typed_data(domain), self.signature)
        except CryptoError as exc:
            raise ReceiptError(f"receipt {self.receipt.request_id}: {exc}") from None

    def verify(self, operator: str, domain: dict[str, Any]) -> None:
        """Raise unless ``operator`` signed this receipt in ``domain``.

        Raises:
            ReceiptError: Signed by someone else, or a malformed signature.
        """
        signer = self.signer(domain)
        if signer != to_checksum_address(operator):
            raise ReceiptError(
                f"receipt {self.receipt.request_id} is signed by {signer}, not by {operator}"
            )

    def to_json(self) -> str:
        """The receipt as compact JSON (what the ledger stores and the API returns)."""
        return self.model_dump_json()
