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
    mix: dict[str, float] | None = None
    """A weighted mix of adapters, ``{name: weight}`` (weights > 0), instead of ``adapter``."""
    base_model: str | None = None
    max_tokens: int = 64
    retrieval: str | None = None
    """A datanet to retrieve sources from (its latest snapshot), numbered in the prompt."""
    k: int = 3
    reader: str | None = None
    """The local account whose approved access reads a private ``retrieval`` datanet."""


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
    weights = _weights(body)
    engine, base, manifests = await state.chat.prepare(list(weights), body.base_model)
    chosen: str | dict[str, float] | None = body.adapter or None
    if body.mix:
        chosen = weights
    params = SamplingParams(max_tokens=body.max_tokens, adapter=chosen)
    # NOTE: each adapter's part of the answer (its weight over the mix's total) for the receipt
    total = sum(weights.values())
    parts = [
        AnswerPart(name, str(manifests[name].adapter_id), weight / total)
        for name, weight in weights.items()
    ]
    messages = [{"role": "user", "content": body.message}]
    sources: list[dict[str, Any]] = []
    passages: list[Any] = []
    if body.retrieval:
        if not 1 <= body.k <= 10:
            raise ConfigError(f"k must be within 1..10 sources, got {body.k}")
        passages = await run_in_threadpool(
            _retrieve, state, body.retrieval, body.message, body.k, body.reader or None
        )
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


def _weights(body: ChatBody) -> dict[str, float]:
    """The adapters answering and their weights (one adapter weighs 1).

    Raises:
        ConfigError: Both an adapter and a mix, or a mix weight that is not positive.
    """
    if body.mix:
        if body.adapter:
            raise ConfigError("pick one adapter or a weighted mix, not both")
        for name, weight in body.mix.items():
            if not 0 < weight < float("inf"):
                raise ConfigError(f"the weight of {name!r} in the mix must be > 0, got {weight}")
        return dict(body.mix)
    return {body.adapter: 1.0} if body.adapter else {}


def _retrieve(
    state: StudioState, datanet: str, question: str, k: int, reader: str | None
) -> list[Any]:
    """The ``k`` records of ``datanet``'s latest snapshot that best match ``question``; a
    private datanet is read with the grant of the local account called ``reader``.

    Raises:
        DataNotFoundError: No such datanet or account.
        ConfigError: It has no snapshot yet.
        AccessDeniedError: A private datanet, and no reader or one without an approved
            access request.
    """
    from openledger.attribution import Retriever
    from openledger.studio.access import reader_grant

    with state.workspace.open_datanet(datanet) as opened:
        snapshot = opened.latest_snapshot()
        if snapshot is None:
            raise ConfigError(f"datanet {datanet!r} has no snapshot to retrieve from")
        grant = reader_grant(state.workspace, opened, reader, "reads it", "sources read as")
        return Retriever(snapshot, grant=grant).search(question, k=k)


@router.post("/attribute")
def attribute_answer(body: AttributeBody, request: Request) -> dict[str, Any]:
    """Start attributing an adapter's part of a metered answer to the contributors of the
    snapshot the adapter learnt from, in the background; the page polls the job. Once done,
    the attribution is in the Studio's ledger, where the answer waits for the next epoch.
    """
    state = _state(request)
    job = state.attributions.start(body.request_id, body.adapter, body.prompt, body.completion)
    return job.to_dict(state.workspace.names_by_address())


@router.get("/attribute/{job_id}")
def get_attribution(job_id: str, request: Request) -> dict[str, Any]:
    """An attribution's state; once done its shares and how many answers wait for an epoch."""
    state = _state(request)
    job = state.attributions.get(job_id)
    found = job.to_dict(state.workspace.names_by_address())
    if job.state == "done":
        found["pending"] = state.rewards.counts()["attributed"]
    return found


@router.post("/attribute/{job_id}/cancel")
def cancel_attribution(job_id: str, request: Request) -> dict[str, Any]:
    """Stop an attribution at once; nothing of it is written."""
    state = _state(request)
    return state.attributions.cancel(job_id).to_dict(state.workspace.names_by_address())
