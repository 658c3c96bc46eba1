"""Our exceptions as HTTP statuses in OpenAI's error shape.

====================================  ======  =====================  =======================
exception                             status  type                   code
====================================  ======  =====================  =======================
RequestFieldError                     400     invalid_request_error  None
InvalidRequestError                   400     invalid_request_error  context_length_exceeded
                                                                     for a prompt too long
AuthenticationError                   401     invalid_request_error  invalid_api_key
PermissionDeniedError                 403     invalid_request_error  permission_denied
ModelNotFoundError, AdapterNotFound   404     invalid_request_error  model_not_found
AdapterConflictError                  409     invalid_request_error  adapter_exists
AdapterIdMismatchError                400     invalid_request_error  adapter_id_mismatch
AdapterSourceError                    400     invalid_request_error  adapter_source_refused,
                                                                     sha256_mismatch
AdapterFormatError                    400     invalid_request_error  adapter_format_invalid
AdapterMismatchError                  400     invalid_request_error  adapter_mismatch
RateLimitError                        429     rate_limit_error       rate_limit_exceeded
                                                                     (Retry-After when known)
OverloadedError, AdapterCapacityError 503     server_error           overloaded
EngineDeadError                       503     server_error           engine_dead
====================================  ======  =====================  =======================

On the adapter endpoints (:func:`adapter_http_error`) a source that cannot be had is
``404 adapter_source_not_found`` with ``param: "source"``, as OpenAI answers 404 for a
``model`` that does not exist; the source errors name ``source`` (or ``sha256``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from openledger.exceptions import (
    AdapterCapacityError,
    AdapterConflictError,
    AdapterError,
    AdapterFormatError,
    AdapterIdMismatchError,
    AdapterMismatchError,
    AdapterNotFoundError,
    AdapterSourceError,
    AuthenticationError,
    EngineDeadError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestFieldError,
    TokenRateLimitError,
)
from openledger.gateway.wire import ErrorBody, error_payload

__all__ = ["HttpError", "adapter_http_error", "http_error"]

logger = logging.getLogger(__name__)

# NOTE: how the engine words a prompt that does not fit (serve/engine.py _check_length).
_TOO_LONG = ("the context holds", "needs more KV blocks")


@dataclass(frozen=True, slots=True)
class HttpError:
    """An error response: its status and its OpenAI-shaped body."""

    status: int
    body: ErrorBody
    headers: dict[str, str] | None = None


def http_error(exc: BaseException) -> HttpError:
    """Map an exception to its response (unknown ones to a 500 without details)."""
    message = str(exc)
    if isinstance(exc, RequestFieldError):
        return _error(400, message, "invalid_request_error", exc.param, None)
    if isinstance(exc, InvalidRequestError):
        code = "context_length_exceeded" if any(s in message for s in _TOO_LONG) else None
        return _error(400, message, "invalid_request_error", None, code)
    if isinstance(exc, AuthenticationError):
        return _error(401, message, "invalid_request_error", None, "invalid_api_key")
    if isinstance(exc, PermissionDeniedError):
        return _error(403, message, "invalid_request_error", None, "permission_denied")
    if isinstance(exc, (ModelNotFoundError, AdapterNotFoundError)):
        return _error(404, message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, AdapterConflictError):
        return _error(409, message, "invalid_request_error", "name", "adapter_exists")
    if isinstance(exc, AdapterIdMismatchError):
        return _error(400, message, "invalid_request_error", "adapter_id", "adapter_id_mismatch")
    if isinstance(exc, AdapterCapacityError):
        return _error(503, message, "server_error", None, "overloaded")
    if isinstance(exc, AdapterError):
        return _adapter_error(exc, "model")
    if isinstance(exc, RateLimitError):
        error = _error(429, message, "rate_limit_error", None, "rate_limit_exceeded")
        if isinstance(exc, TokenRateLimitError):
            return HttpError(error.status, error.body, {"Retry-After": str(exc.retry_after)})
        return error
    if isinstance(exc, OverloadedError):
        return _error(503, message, "server_error", None, "overloaded")
    if isinstance(exc, EngineDeadError):
        return _error(503, message, "server_error", None, "engine_dead")
    logger.error("unexpected error", exc_info=exc)
    return _error(500, "internal error; see the server's log", "server_error", None, None)


def adapter_http_error(exc: BaseException) -> HttpError:
    """Map an error of an adapter endpoint (load, replace) to its response."""
    if isinstance(exc, AdapterNotFoundError):
        return _error(404, str(exc), "invalid_request_error", "source", "adapter_source_not_found")
    if isinstance(exc, AdapterError):
        return _adapter_error(exc, "source")
    return http_error(exc)


def _adapter_error(exc: AdapterError, param: str) -> HttpError:
    """A source, format or fit error of an adapter: 400 naming what was wrong."""
    message = str(exc)
    code = "adapter_mismatch"
    if isinstance(exc, AdapterSourceError):
        code = "adapter_source_refused"
        # NOTE: how serve/adapters words a pin (fetch.download, sources._pin, check_sha256)
        if "sha256" in message:
            param = "sha256"
            code = "sha256_mismatch" if "not the expected" in message else code
    elif isinstance(exc, AdapterFormatError):
        code = "adapter_format_invalid"
    elif not isinstance(exc, AdapterMismatchError):
        code = "adapter_unusable"
    return _error(400, message, "invalid_request_error", param, code)


def _error(status: int, message: str, kind: str, param: str | None, code: str | None) -> HttpError:
    return HttpError(status, error_payload(message, kind, param, code))
