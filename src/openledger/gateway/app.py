"""The FastAPI application: routes, error handlers and the lifespan around the state."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from openledger._version import __version__
from openledger.crypto import to_checksum_address
from openledger.exceptions import (
    AuthenticationError,
    CryptoError,
    OpenLedgerError,
    RequestFieldError,
)
from openledger.gateway.adapter_routes import adapter_card, add_adapter_routes
from openledger.gateway.batching import Arrival
from openledger.gateway.errors import http_error
from openledger.gateway.ledger import request_hash_of
from openledger.gateway.planning import plan_request
from openledger.gateway.schemas import ChatCompletionRequest, CompletionRequest, parse_request
from openledger.gateway.serving import run_plan
from openledger.gateway.settlement import Claim, claims_of
from openledger.gateway.state import Admission, GatewayState
from openledger.gateway.wire import error_payload

__all__ = ["GatewayAPI", "build_app"]

logger = logging.getLogger("openledger.gateway")


Endpoint = Callable[[Request], Awaitable[Response]]


class GatewayAPI(FastAPI):
    """The gateway's FastAPI application, serving its two generation routes directly.

    ``POST /v1/chat/completions`` and ``POST /v1/completions`` skip FastAPI's middleware
    stack, routing and dependency solving (about 35 microseconds a request on one event
    loop, which a burst of requests pays one after the other before its first token);
    their errors go to the application's own exception handlers, as through the stack.
    Everything else, and every route once middleware has been added with
    ``add_middleware``, goes through FastAPI as usual.
    """

    generation_routes: dict[str, Endpoint]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.user_middleware:
            endpoint = self.generation_routes.get(_route_path(scope))
            if endpoint is not None:
                scope["app"] = self
                request = Request(scope, receive, send)
                try:
                    response = await endpoint(request)
                except Exception as exc:
                    response = await self._handle(request, exc)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        """Answer ``exc`` with the handler registered for its nearest class."""
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                response = await handler(request, exc)  # type: ignore[misc]
                return cast(Response, response)
        raise exc  # NOTE: unreachable while a handler for Exception is registered


def _route_path(scope: Scope) -> str:
    """The request's path below the application's root path (where it is mounted)."""
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def build_app(state: GatewayState) -> FastAPI:
    """Return the ASGI application serving ``state``; its shutdown closes the state."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await state.shutdown()

    app = GatewayAPI(title="openledger gateway", version=__version__, lifespan=lifespan)
    app.state.gateway = state
    _add_error_handlers(app, state)
    _add_info_routes(app, state)
    _add_generation_routes(app, state)
    add_adapter_routes(app, state)
    return app


def _add_generation_routes(app: GatewayAPI, state: GatewayState) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(state, request, ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(state, request, CompletionRequest)

    app.generation_routes = {
        "/v1/chat/completions": chat_completions,
        "/v1/completions": completions,
    }


async def _generate(
    state: GatewayState,
    request: Request,
    schema: type[ChatCompletionRequest] | type[CompletionRequest],
) -> Response:
    # NOTE: counted in before reading it, so a burst the server holds goes in together
    arrival = await state.window.arrive()
    try:
        caller = await state.authenticate(request.headers.get("authorization"))
        body = await _read_json(request, state.config.limits.max_body_bytes)
        if body is None:
            return _too_large(state.config.limits.max_body_bytes)
        parsed: ChatCompletionRequest | CompletionRequest
        if schema is ChatCompletionRequest:
            parsed = parse_request(body, ChatCompletionRequest)
        else:
            parsed = parse_request(body, CompletionRequest)
        await state.adapters.ensure(_adapter_names(state, parsed))
        plan = plan_request(state, caller, parsed)
        need = len(plan.choices)
        admission = state.admit(caller, plan.engine_names, need, plan.prompt_estimate)
        try:
            if not await _wait_turn(admission, arrival, request):
                admission.release()
                return Response(status_code=499)  # NOTE: the client left while it waited
            await arrival.ready()
        except BaseException:
            admission.release()
            raise
    finally:
        arrival.leave()
    return await run_plan(state, request, plan, admission)


def _adapter_names(
    state: GatewayState, parsed: ChatCompletionRequest | CompletionRequest
) -> list[str]:
    """Adapter names a request asks for (the resolver may load the unknown ones)."""
    if parsed.adapters is not None:
        return sorted(parsed.adapters)
    return [] if parsed.model == state.config.model_name else [parsed.model]


async def _wait_turn(admission: Admission, arrival: Arrival, request: Request) -> bool:
    """Wait for the fair queue's turn; False if the client disconnects first."""
    if admission.turn is None or admission.turn.granted:
        return True
    arrival.leave()  # NOTE: a window forming now need not wait for it
    turn = asyncio.ensure_future(admission.wait_turn())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({turn, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (turn, gone):
            task.cancel()
        await asyncio.gather(turn, gone, return_exceptions=True)
    return bool(admission.turn.granted)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _add_info_routes(app: FastAPI, state: GatewayState) -> None:
    @app.get("/health")
    async def health() -> Response:
        status = "draining" if state.draining else "ok"
        return JSONResponse({"status": status}, status_code=503 if state.draining else 200)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        await state.authenticate(request.headers.get("authorization"))
        base = state.config.model_name
        data: list[dict[str, Any]] = [_model_card(base, state.started)]
        served = sorted(state.adapters.current.values(), key=lambda s: s.name)
        data.extend(adapter_card(s, base) for s in served)
        return {"object": "list", "data": data}

    @app.get("/v1/receipts/{receipt_id}")
    async def receipt(receipt_id: str, request: Request) -> Response:
        caller = await state.authenticate(request.headers.get("authorization"))
        signed = await run_in_threadpool(state.ledger.receipt, request_hash_of(receipt_id))
        if signed is None or signed.receipt.payer != caller.payer:
            # NOTE: another payer's receipt reads as missing: ids are not a way to probe
            return _json_error(404, f"no receipt {receipt_id} for this key", "receipt_not_found")
        body = json.loads(signed.to_json())
        body["signer"] = state.meter.operator.address
        body["domain"] = {k: v for k, v in state.meter.domain.items() if k != "salt"}
        return JSONResponse(body)

    @app.get("/v1/claims/{address}")
    async def claims(address: str, request: Request) -> Response:
        await state.authenticate(request.headers.get("authorization"))
        try:
            account = to_checksum_address(address, what="address")
        except CryptoError as exc:
            raise RequestFieldError(str(exc), "address") from None

        def find() -> list[Claim]:
            return claims_of(state.ledger, account, state.protocol())

        found = await run_in_threadpool(find)
        body = {"object": "list", "account": account, "data": [c.to_json() for c in found]}
        return JSONResponse(body)

    @app.get("/metrics")
    async def metrics() -> Response:
        content, content_type = state.metrics.render()
        return Response(content, media_type=content_type)


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "openledger"}


def _add_error_handlers(app: FastAPI, state: GatewayState) -> None:
    @app.exception_handler(OpenLedgerError)
    async def ours(request: Request, exc: OpenLedgerError) -> Response:
        error = http_error(exc)
        state.metrics.requests.labels(request.url.path, str(error.status)).inc()
        headers = dict(error.headers or {})
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(dict(error.body), status_code=error.status, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        error = http_error(exc)  # NOTE: logged there; the client gets no internals
        state.metrics.requests.labels(request.url.path, str(error.status)).inc()
        return JSONResponse(dict(error.body), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else None
        return _json_error(exc.status_code, str(exc.detail), code)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> Response:
        return _json_error(400, str(exc), None)


async def _read_json(request: Request, limit: int) -> object | None:
    """The body as JSON, or None when it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    raw = await request.body()
    if len(raw) > limit:
        return None
    try:
        body: object = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestFieldError(f"the request body is not valid JSON: {exc}", None) from None
    return body


def _too_large(limit: int) -> Response:
    return _json_error(413, f"the request body is over {limit} bytes", "request_too_large")


def _json_error(status: int, message: str, code: str | None) -> Response:
    body = error_payload(message, "invalid_request_error", None, code)
    return JSONResponse(dict(body), status_code=status)
