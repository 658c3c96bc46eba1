"""The JSON a datanet service and :class:`~openledger.data.RemoteDatanet` exchange.

One function pair per result type, so the service (``openledger.gateway.datanets``) and the
client write and read the same fields. Errors travel as OpenAI-shaped bodies,
``{"error": {"message", "type", "param", "code"}}``, whose ``code`` names the refusal
(:data:`ERROR_CODES`); the client raises the same exception the datanet raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openledger.data.access import AccessRequest
from openledger.data.receipts import ContributionReceipt, Reputation, Review, StoredRecord
from openledger.data.schemas import Record
from openledger.data.snapshot import Snapshot
from openledger.exceptions import (
    AccessDeniedError,
    ConfigError,
    DataError,
    DataNotFoundError,
    DuplicateRecordError,
    NonceError,
    PayloadTooLargeError,
    QualityError,
    SchemaError,
    SignatureError,
    StoreError,
)
from openledger.types import Address, Hash32

__all__ = [
    "CALL_HEADER",
    "ERROR_CODES",
    "GRANT_HEADER",
    "error_code",
    "error_from_code",
    "receipt_from_json",
    "receipt_json",
    "reputation_from_json",
    "request_from_json",
    "request_json",
    "review_from_json",
    "review_json",
    "snapshot_json",
    "stored_from_json",
    "stored_json",
]

GRANT_HEADER = "X-OpenLedger-Grant"
"""Request header carrying an access grant as JSON (reads of a private datanet)."""

CALL_HEADER = "X-OpenLedger-Call"
"""Request header carrying a :class:`~openledger.data.remote_signing.SignedCall` as JSON."""

ERROR_CODES: dict[str, tuple[int, type[Exception]]] = {
    "schema_error": (400, SchemaError),
    "quality_rule": (400, QualityError),
    "duplicate_record": (409, DuplicateRecordError),
    "replayed": (409, NonceError),
    "nonce_skipped": (409, NonceError),
    "expired": (400, SignatureError),
    "bad_signature": (400, SignatureError),
    "access_denied": (403, AccessDeniedError),
    "not_found": (404, DataNotFoundError),
    "invalid_request": (400, ConfigError),
    "request_too_large": (413, PayloadTooLargeError),
    "store_unavailable": (503, StoreError),
}
"""Each refusal's ``code``: its HTTP status and the exception the client raises."""


def error_code(exc: BaseException) -> str | None:
    """The ``code`` of a datanet's refusal, or ``None`` for errors that are not one."""
    if isinstance(exc, NonceError):
        return "nonce_skipped" if "skips ahead" in str(exc) else "replayed"
    if isinstance(exc, SignatureError):
        return "expired" if "deadline" in str(exc) else "bad_signature"
    kinds: tuple[tuple[type[Exception], str], ...] = (
        (SchemaError, "schema_error"),
        (QualityError, "quality_rule"),
        (DuplicateRecordError, "duplicate_record"),
        (AccessDeniedError, "access_denied"),
        (DataNotFoundError, "not_found"),
        (StoreError, "store_unavailable"),
        (PayloadTooLargeError, "request_too_large"),
        (ConfigError, "invalid_request"),
        (DataError, "invalid_request"),
    )
    return next((code for kind, code in kinds if isinstance(exc, kind)), None)


def error_from_code(code: str | None, message: str) -> Exception:
    """The exception a refusal with ``code`` stands for (a :class:`StoreError` if unknown)."""
    kind = ERROR_CODES.get(code or "", (0, StoreError))[1]
    return kind(message)


def receipt_json(receipt: ContributionReceipt) -> dict[str, Any]:
    """A receipt as JSON."""
    return {
        "record_hash": receipt.record_hash,
        "contribution_id": receipt.contribution_id,
        "position": receipt.position,
        "contributor": receipt.contributor,
        "near_duplicates": list(receipt.near_duplicates),
    }


def receipt_from_json(body: Mapping[str, Any]) -> ContributionReceipt:
    """The receipt :func:`receipt_json` wrote."""
    return ContributionReceipt(
        Hash32(body["record_hash"]),
        int(body["contribution_id"]),
        int(body["position"]),
        Address(body["contributor"]),
        tuple(Hash32(h) for h in body["near_duplicates"]),
    )


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    """A snapshot's root, count, manifest and its hash as JSON (``RemoteSnapshot`` reads it)."""
    return {
        "id": snap.id,
        "root": snap.root,
        "count": snap.count,
        "created_at": snap.created_at,
        "manifest": snap.manifest,
        "manifest_hash": snap.manifest_hash,
    }


def stored_json(stored: StoredRecord) -> dict[str, Any]:
    """A stored record as JSON: its fields (``None`` left out) and its provenance."""
    return {
        "record": stored.record.model_dump(mode="json", exclude_none=True),
        "record_hash": stored.record_hash,
        "contributor": stored.contributor,
        "contribution_id": stored.contribution_id,
        "position": stored.position,
        "status": stored.status,
    }


def stored_from_json(schema: type[Record], body: Mapping[str, Any]) -> StoredRecord:
    """The stored record :func:`stored_json` wrote, validated against ``schema``."""
    return StoredRecord(
        schema.model_validate(body["record"]),
        Hash32(body["record_hash"]),
        Address(body["contributor"]),
        int(body["contribution_id"]),
        int(body["position"]),
        str(body["status"]),
    )


def review_json(review: Review) -> dict[str, Any]:
    """A stored review as JSON."""
    return {
        "record_hash": review.record_hash,
        "validator": review.validator,
        "accept": review.accept,
        "reason": review.reason,
        "signature": review.signature,
        "created_at": review.created_at,
    }


def review_from_json(body: Mapping[str, Any]) -> Review:
    """The review :func:`review_json` wrote."""
    return Review(
        Hash32(body["record_hash"]),
        Address(body["validator"]),
        bool(body["accept"]),
        str(body["reason"]),
        str(body["signature"]),
        float(body["created_at"]),
    )


def request_json(request: AccessRequest) -> dict[str, Any]:
    """An access request as JSON."""
    return {
        "id": request.id,
        "requester": request.requester,
        "purpose": request.purpose,
        "status": request.status,
    }


def request_from_json(body: Mapping[str, Any]) -> AccessRequest:
    """The access request :func:`request_json` wrote."""
    return AccessRequest(
        int(body["id"]), Address(body["requester"]), str(body["purpose"]), str(body["status"])
    )


def reputation_from_json(body: Mapping[str, Any]) -> Reputation:
    """A reputation from ``{"contributor", "records", "rejected"}``."""
    return Reputation(Address(body["contributor"]), int(body["records"]), int(body["rejected"]))
