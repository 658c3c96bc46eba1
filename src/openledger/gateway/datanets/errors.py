"""A datanet's refusals as HTTP responses in the gateway's (OpenAI-shaped) error JSON.

=========================================  ======  ==================
refusal                                    status  code
=========================================  ======  ==================
SchemaError (fields, size, UTF-8)          400     schema_error
QualityError (a quality rule)              400     quality_rule
DuplicateRecordError                       409     duplicate_record
NonceError, used nonce or repeated review  409     replayed
NonceError, a nonce that skips ahead       409     nonce_skipped
SignatureError, past its deadline          400     expired
SignatureError, any other                  400     bad_signature
AccessDeniedError                          403     access_denied
DataNotFoundError                          404     not_found
ConfigError, a malformed body or field     400     invalid_request
PayloadTooLargeError (``max_body_bytes``)  413     request_too_large
StoreError                                 503     store_unavailable
=========================================  ======  ==================

The codes and the exceptions they stand for are :data:`openledger.data.wire.ERROR_CODES`,
which :class:`~openledger.data.RemoteDatanet` reads to raise the same exception.
"""

from __future__ import annotations

from pydantic import ValidationError

from openledger.data.wire import ERROR_CODES, error_code
from openledger.gateway.errors import HttpError, http_error
from openledger.gateway.wire import error_payload

__all__ = ["datanet_http_error"]


def datanet_http_error(exc: BaseException) -> HttpError:
    """Map an exception of a datanet endpoint to its response (others as the gateway does)."""
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        message = f"invalid request body: {errors[0]['msg'] if errors else exc}"
        return HttpError(
            400, error_payload(message, "invalid_request_error", param, "invalid_request")
        )
    code = error_code(exc)
    if code is None:
        return http_error(exc)
    status = ERROR_CODES[code][0]
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return HttpError(status, error_payload(str(exc), kind, None, code))
