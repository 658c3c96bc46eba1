"""Request bodies of the OpenAI endpoints, validated once at the edge.

Every field a client sends is either supported, or refused with HTTP 400 naming it; a
field that asks for nothing (``null``, or a neutral value such as ``frequency_penalty: 0``)
is accepted, since honouring it and ignoring it are the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from openledger.exceptions import RequestFieldError

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "StreamOptions",
    "parse_request",
]

# NOTE: values that change nothing; a field holding one of them is accepted and dropped.
_NEUTRAL: dict[str, tuple[object, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "echo": (False,),
    "best_of": (1,),
    "parallel_tool_calls": (True, False),
    "store": (False,),
    "service_tier": ("auto", "default"),
}


class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` is supported."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    include_usage: bool = False


class TextPart(BaseModel):
    """A ``{"type": "text", "text": ...}`` content part."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message: a role and text content (a string or text parts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_engine_message(self) -> dict[str, str]:
        """The message as the chat template reads it (developer becomes system)."""
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _Common(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    adapters: dict[str, float] | None = Field(
        default=None, description="A weighted mix of served adapters {name: weight > 0}."
    )
    min_tokens: int = Field(
        default=0, ge=0, description="Tokens generated before EOS or a stop may end it (vLLM's)."
    )
    ignore_eos: bool = Field(default=False, description="Generate past EOS (vLLM's; benchmarks).")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return stops

    @field_validator("adapters")
    @classmethod
    def _weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one adapter")
        for name, weight in value.items():
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"adapter {name!r} needs a finite weight > 0, got {weight}")
        return value

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        return tuple(self.stop or ())


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens``, else ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        """Top log-probabilities to report per token, or None."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=16, ge=1)

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts (text or token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [[int(p) for p in prompt]]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    @property
    def token_limit(self) -> int | None:
        """``max_tokens``."""
        return self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        """Top log-probabilities to report per token, or None."""
        return self.logprobs


RequestT = TypeVar("RequestT", bound=BaseModel)


def parse_request(body: object, schema: type[RequestT]) -> RequestT:
    """Validate a JSON body against ``schema``.

    Raises:
        RequestFieldError: Not an object, an unsupported field (named), or an invalid value
            (its path named, e.g. ``messages[0].role``).
    """
    if not isinstance(body, Mapping):
        raise RequestFieldError("the request body must be a JSON object", None)
    fields = _drop_neutral(body, schema)
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        raise _field_error(exc) from None


def _drop_neutral(body: Mapping[str, Any], schema: type[BaseModel]) -> dict[str, Any]:
    known = set(schema.model_fields)
    unsupported = [
        name
        for name, value in body.items()
        if name not in known and value is not None and value not in _NEUTRAL.get(name, ())
    ]
    if unsupported:
        names = ", ".join(sorted(unsupported))
        raise RequestFieldError(
            f"unsupported field(s): {names}. This server does not implement them; "
            "leave them out of the request.",
            sorted(unsupported)[0],
        )
    return {name: value for name, value in body.items() if name in known}


def _field_error(exc: ValidationError) -> RequestFieldError:
    error = exc.errors()[0]
    param = _path(error.get("loc", ()))
    if error.get("type") == "extra_forbidden":
        return RequestFieldError(f"unsupported field: {param}", param)
    return RequestFieldError(f"invalid {param or 'request'}: {error.get('msg')}", param)


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("str", "list[TextPart]", "list[str]", "list[int]", "list[list[int]]"):
            continue  # NOTE: pydantic names the union member it tried; clients want the field
        else:
            path += f".{part}" if path else str(part)
    return path
