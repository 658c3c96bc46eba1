"""The adapter endpoints (admin keys only): load, list, replace in place, delete.

::

    POST   /v1/adapters          {"name", "source", "sha256"?, "adapter_id"?, "replace"?}
    PUT    /v1/adapters/{name}   {"source", "sha256"?, "adapter_id"?}    (load or replace;
                                 the answer counts the requests still on the old version)
    GET    /v1/adapters          the served adapters, with their sources
    DELETE /v1/adapters/{name}   returns once the requests using it have finished

A refused source changes nothing: the version being served keeps serving. What these
endpoints serve is saved in the ledger (``served_adapters``) before they answer, and a
restarted gateway serves it again (:func:`~openledger.gateway.server.restore_adapters`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from openledger.exceptions import AdapterError, RequestFieldError
from openledger.gateway.adapters import ServedAdapter
from openledger.gateway.errors import adapter_http_error
from openledger.gateway.schemas import parse_request
from openledger.gateway.state import GatewayState

__all__ = ["AdapterLoad", "AdapterPut", "adapter_card", "add_adapter_routes"]


class AdapterPut(BaseModel):
    """Body of ``PUT /v1/adapters/{name}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(
        min_length=1, description="A folder on the server, hf://org/repo[@rev] or https URL."
    )
    sha256: str | None = Field(
        default=None, description="Expected sha256 of an https archive (64 hex digits)."
    )
    adapter_id: str | None = Field(
        default=None, description="Expected adapter id (0x keccak256 of the weights file)."
    )


class AdapterLoad(AdapterPut):
    """Body of ``POST /v1/adapters``."""

    name: str = Field(min_length=1, description="The name clients send as `model`.")
    replace: bool = Field(default=False, description="Replace a served adapter of that name.")


def adapter_card(served: ServedAdapter, parent: str, *, source: bool = False) -> dict[str, Any]:
    """An adapter as the API shows it (``/v1/models`` style, plus its adapter id)."""
    card: dict[str, Any] = {
        "id": served.name,
        "object": "model",
        "created": served.created,
        "owned_by": "openledger",
        "parent": parent,
        "adapter_id": served.adapter_id,
    }
    if source:
        card["source"] = served.source
    return card


def add_adapter_routes(app: FastAPI, state: GatewayState) -> None:
    """Add the adapter endpoints to ``app``."""
    base = state.config.model_name

    @app.get("/v1/adapters")
    async def list_adapters(request: Request) -> dict[str, Any]:
        await state.authenticate_admin(request.headers.get("authorization"))
        served = sorted(state.adapters.current.values(), key=lambda s: s.name)
        return {"object": "list", "data": [adapter_card(s, base, source=True) for s in served]}

    @app.post("/v1/adapters")
    async def load(request: Request) -> Response:
        await state.authenticate_admin(request.headers.get("authorization"))
        body = parse_request(await _json(request), AdapterLoad)
        return await _put(state, body.name, body, body.replace)

    @app.put("/v1/adapters/{name:path}")
    async def put(name: str, request: Request) -> Response:
        await state.authenticate_admin(request.headers.get("authorization"))
        body = parse_request(await _json(request), AdapterPut)
        return await _put(state, name, body, True)

    @app.delete("/v1/adapters/{name:path}")
    async def delete(name: str, request: Request) -> Response:
        await state.authenticate_admin(request.headers.get("authorization"))
        served = await state.adapters.delete(name)
        await asyncio.get_running_loop().run_in_executor(None, state.ledger.forget_adapter, name)
        body = {"id": name, "object": "model", "deleted": True, "adapter_id": served.adapter_id}
        return JSONResponse(body)


async def _put(state: GatewayState, name: str, body: AdapterPut, replace: bool) -> Response:
    if name == state.config.model_name:
        raise RequestFieldError(f"{name!r} is the base model's name", "name")
    try:
        served, previous = await state.adapters.put(
            name, body.source, sha256=body.sha256, adapter_id=body.adapter_id, replace=replace
        )
    except AdapterError as exc:
        error = adapter_http_error(exc)
        return JSONResponse(dict(error.body), status_code=error.status)
    # NOTE: saved before the answer: a restarted gateway serves what the admin was told it does
    await asyncio.get_running_loop().run_in_executor(
        None, state.ledger.save_adapter, name, body.source, served.adapter_id, body.sha256
    )
    card = adapter_card(served, state.config.model_name, source=True)
    if previous is not None:
        card["replaced_adapter_id"] = previous.adapter_id
        # NOTE: requests that still run (or wait) on the replaced version, and finish on it
        card["replaced_in_flight"] = state.adapters.in_use(previous.engine_name)
    return JSONResponse(card, status_code=200 if previous is not None else 201)


async def _json(request: Request) -> object:
    raw = await request.body()
    if len(raw) > 65536:
        raise RequestFieldError("an adapter request body is at most 64 KiB", None)
    try:
        body: object = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestFieldError(f"the request body is not valid JSON: {exc}", None) from None
    return body
