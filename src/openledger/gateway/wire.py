"""OpenAI wire payloads: responses, stream chunks, usage, log-probabilities, errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict

from openledger.gateway.receipts import GatewayReceipt

__all__ = ["AdapterUsage", "ErrorBody", "ErrorPayload", "Usage", "error_payload", "sse"]

Kind = Literal["chat", "text"]
Decode = Callable[[int], str]


class ErrorPayload(TypedDict):
    """The inside of OpenAI's error JSON."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(TypedDict):
    """OpenAI's error JSON: ``{"error": {...}}``."""

    error: ErrorPayload


class AdapterUsage(TypedDict):
    """One adapter of a response's ``usage.adapters``."""

    name: str
    adapter_id: str
    weight: float


class Usage(TypedDict):
    """A response's ``usage``: OpenAI's counts plus the receipt and the adapters used."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    receipt_id: str
    adapters: list[AdapterUsage]


def error_payload(message: str, kind: str, param: str | None, code: str | None) -> ErrorBody:
    """Build OpenAI's error JSON."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sse(payload: Mapping[str, Any] | str) -> bytes:
    """One server-sent event carrying ``payload`` (JSON, or a literal such as ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def usage_of(receipt: GatewayReceipt) -> Usage:
    """The ``usage`` block of a metered response."""
    adapters: list[AdapterUsage] = [
        {"name": name, "adapter_id": adapter_id, "weight": weight}
        for (name, weight), adapter_id in zip(
            receipt.adapters.items(), receipt.adapter_ids, strict=True
        )
    ]
    return {
        "prompt_tokens": receipt.prompt_tokens,
        "completion_tokens": receipt.completion_tokens,
        "total_tokens": receipt.prompt_tokens + receipt.completion_tokens,
        "receipt_id": receipt.request_id,
        "adapters": adapters,
    }


def envelope(kind: Kind, response_id: str, created: int, model: str, chunk: bool) -> dict[str, Any]:
    """The fields every response and chunk carries."""
    if kind == "chat":
        obj = "chat.completion.chunk" if chunk else "chat.completion"
    else:
        obj = "text_completion"
    return {"id": response_id, "object": obj, "created": created, "model": model}


def choice_payload(
    kind: Kind, index: int, text: str, finish_reason: str | None, logprobs: Any
) -> dict[str, Any]:
    """One choice of a whole response."""
    if kind == "chat":
        message = {"role": "assistant", "content": text}
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chunk_choice(
    kind: Kind, index: int, delta: Mapping[str, str], finish_reason: str | None, logprobs: Any
) -> dict[str, Any]:
    """One choice of a stream chunk (``delta`` for chat, ``text`` for completions)."""
    if kind == "chat":
        return {
            "index": index,
            "delta": dict(delta),
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
    text = delta.get("content", "")
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def finish_reason_of(reason: str | None) -> str:
    """OpenAI's finish reason for the engine's (an abort reads as ``"stop"``)."""
    return "length" if reason == "length" else "stop"


def logprobs_payload(
    kind: Kind,
    token_ids: Sequence[int],
    logprobs: Sequence[Mapping[int, float]],
    top: int,
    decode: Decode,
    offset: int = 0,
) -> dict[str, Any]:
    """Log-probabilities of ``token_ids`` in the chat or completions shape.

    Args:
        kind: ``"chat"`` or ``"text"``.
        token_ids: The tokens, in order.
        logprobs: Per token ``{token id: logprob}`` (the chosen one and the most likely).
        top: How many of the most likely to list per token.
        decode: Token id to its text.
        offset: Characters of text before the first token (completions' ``text_offset``).
    """
    rows = [
        (decode(tid), float(lps.get(tid, float("-inf"))), _top(lps, top, decode))
        for tid, lps in zip(token_ids, logprobs, strict=False)
    ]
    if kind == "chat":
        content = [
            {
                "token": text,
                "logprob": lp,
                "bytes": list(text.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in best
                ],
            }
            for text, lp, best in rows
        ]
        return {"content": content}
    offsets, position = [], offset
    for text, _, _ in rows:
        offsets.append(position)
        position += len(text)
    return {
        "tokens": [text for text, _, _ in rows],
        "token_logprobs": [lp for _, lp, _ in rows],
        "top_logprobs": [dict(best) for _, _, best in rows],
        "text_offset": offsets,
    }


def _top(lps: Mapping[int, float], top: int, decode: Decode) -> list[tuple[str, float]]:
    best = sorted(lps.items(), key=lambda item: -item[1])[:top]
    return [(decode(tid), float(lp)) for tid, lp in best]
