"""Our exceptions as HTTP statuses in OpenAI's error shape.

====================================  ======  =====================  =======================
exception                             status  type                   code
====================================  ======  =====================  =======================
RequestFieldError                     400     invalid_request_error  None
InvalidRequestError                   400     invalid_request_error  context_length_exceeded
                                                                     for a prompt too long
AuthenticationError                   401     invalid_request_error  invalid_api_key
ModelNotFoundError, AdapterNotFound   404     invalid_request_error  model_not_found
RateLimitError                        429     rate_limit_error       rate_limit_exceeded
OverloadedError                       503     server_error           overloaded
EngineDeadError                       503     server_error           engine_dead
====================================  ======  =====================  =======================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from openledger.exceptions import (
    AdapterNotFoundError,
    AuthenticationError,
    EngineDeadError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    RateLimitError,
    RequestFieldError,
)
from openledger.gateway.wire import ErrorBody, error_payload

__all__ = ["HttpError", "http_error"]

logger = logging.getLogger(__name__)

# NOTE: how the engine words a prompt that does not fit (serve/engine.py _check_length).
_TOO_LONG = ("the context holds", "needs more KV blocks")


@dataclass(frozen=True, slots=True)
class HttpError:
    """An error response: its status and its OpenAI-shaped body."""

    status: int
    body: ErrorBody


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
    if isinstance(exc, (ModelNotFoundError, AdapterNotFoundError)):
        return _error(404, message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, RateLimitError):
        return _error(429, message, "rate_limit_error", None, "rate_limit_exceeded")
    if isinstance(exc, OverloadedError):
        return _error(503, message, "server_error", None, "overloaded")
    if isinstance(exc, EngineDeadError):
        return _error(503, message, "server_error", None, "engine_dead")
    logger.error("unexpected error", exc_info=exc)
    return _error(500, "internal error; see the server's log", "server_error", None, None)


def _error(status: int, message: str, kind: str, param: str | None, code: str | None) -> HttpError:
    return HttpError(status, error_payload(message, kind, param, code))
