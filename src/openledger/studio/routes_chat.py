"""The Chat tab's API: a streamed answer (server-sent events) and its attribution."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from openledger.attribution.rag import build_messages, citations_of
from openledger.exceptions import ConfigError, OpenLedgerError
from openledger.studio.rewards import AnswerPart
from openledger.studio.state import StudioState

__all__ = ["router"]

router = APIRouter(prefix="/api")


class ChatBody(BaseModel):
    """Body of ``POST /api/chat``: one question to an adapter or a base model."""

    message: str
    adapter: str | None = None
    base_model: str | None = None
    max_tokens: int = 64
    retrieval: str | None = None
    """A datanet to retrieve sources from (its latest snapshot), numbered in the prompt."""
    k: int = 3


class AttributeBody(BaseModel):
    """Body of ``POST /api/attribute``: an adapter's part of a metered answer to attribute."""

    request_id: str
    adapter: str
    prompt: str
    completion: str


def _state(request: Request) -> StudioState:
    state: StudioState = request.app.state.studio
    return state


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


@router.post("/chat")
async def chat(body: ChatBody, request: Request) -> StreamingResponse:
    """Stream an answer as server-sent events: ``{"delta"}`` pieces, then ``{"done"}``.

    Problems found before the answer starts (no such adapter, a model that cannot load)
    are answered as ordinary error messages; later ones as an ``{"error"}`` event.
    """
    from openledger.serve import SamplingParams

    if not body.message.strip():
        raise ConfigError("type a question first")
    if not 1 <= body.max_tokens <= 4096:
        raise ConfigError(f"max_tokens must be within 1..4096, got {body.max_tokens}")
    state = _state(request)
    engine, base = await state.chat.prepare(body.adapter, body.base_model)
    parts = []
    if body.adapter:
        handle = await run_in_threadpool(state.workspace.adapter, body.adapter)
        parts = [AnswerPart(body.adapter, str(handle.manifest.adapter_id), 1.0)]
    params = SamplingParams(max_tokens=body.max_tokens, adapter=body.adapter or None)
    messages = [{"role": "user", "content": body.message}]
    sources: list[dict[str, Any]] = []
    passages: list[Any] = []
    if body.retrieval:
        if not 1 <= body.k <= 10:
            raise ConfigError(f"k must be within 1..10 sources, got {body.k}")
        passages = await run_in_threadpool(_retrieve, state, body.retrieval, body.message, body.k)
        messages = build_messages(body.message, passages)
        names = state.workspace.names_by_address()
        sources = [
            {
                "number": n,
                "record_hash": p.record_hash,
                "contributor": p.contributor,
                "name": names.get(str(p.contributor), ""),
                "text": p.text,
            }
            for n, p in enumerate(passages, start=1)
        ]

    async def events() -> AsyncIterator[bytes]:
        try:
            if sources:
                yield _event({"sources": sources})
            async for output in engine.stream_outputs(messages, params):
                if output.delta_text:
                    yield _event({"delta": output.delta_text})
                if output.finished:
                    usage = output.usage
                    prompt_tokens = usage.prompt_tokens if usage else 0
                    completion_tokens = usage.completion_tokens if usage else 0
                    request_id = await run_in_threadpool(
                        state.rewards.record,
                        parts,
                        question=body.message,
                        answer=output.text,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        finish_reason=str(output.finish_reason or "stop"),
                    )
                    done: dict[str, Any] = {
                        "done": True,
                        "text": output.text,
                        "tokens": prompt_tokens + completion_tokens,
                        "request_id": request_id,
                    }
                    if sources:
                        done["cited"] = [c.number for c in citations_of(output.text, passages)]
                    yield _event(done)
        except OpenLedgerError as exc:
            yield _event({"error": str(exc)})

    headers = {"Cache-Control": "no-cache", "X-Base-Model": base}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _retrieve(state: StudioState, datanet: str, question: str, k: int) -> list[Any]:
    """The ``k`` records of ``datanet``'s latest snapshot that best match ``question``.

    Raises:
        DataNotFoundError: No such datanet.
        ConfigError: It has no snapshot yet.
    """
    from openledger.attribution import Retriever

    with state.workspace.open_datanet(datanet) as opened:
        snapshot = opened.latest_snapshot()
        if snapshot is None:
            raise ConfigError(f"datanet {datanet!r} has no snapshot to retrieve from")
        return Retriever(snapshot).search(question, k=k)


@router.post("/attribute")
def attribute_answer(body: AttributeBody, request: Request) -> dict[str, Any]:
    """Attribute an adapter's part of a metered answer to the contributors of the snapshot
    the adapter learnt from; the attribution is written into the Studio's ledger, where the
    answer waits for the next reward epoch.
    """
    from openledger.attribution import attribute

    state = _state(request)
    state.rewards.check_answer(body.request_id, body.adapter, body.prompt, body.completion)
    adapter = state.workspace.adapter(body.adapter)
    manifest = adapter.manifest
    if manifest.datanet_id is None or manifest.snapshot_id is None:
        raise ConfigError(f"adapter {body.adapter!r} was not trained on a datanet snapshot")
    name = state.workspace.datanet_for(manifest.datanet_id)
    with state.workspace.open_datanet(name) as datanet:
        snapshot = datanet.snapshot_at(manifest.snapshot_id)
        report = attribute(adapter, snapshot, prompt=body.prompt, completion=body.completion)
    state.rewards.credit(body.request_id, manifest, report)
    names = state.workspace.names_by_address()
    shares = sorted(report.contributor_shares().items(), key=lambda kv: -kv[1])
    return {
        "method": report.method,
        "shares": [{"contributor": a, "name": names.get(a, ""), "share": s} for a, s in shares],
        "pending": state.rewards.counts()["attributed"],
    }
