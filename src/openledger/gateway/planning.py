"""From a validated request body to the engine requests it runs (a :class:`Plan`)."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openledger.exceptions import RequestFieldError
from openledger.gateway.generation import Choice
from openledger.gateway.metering import MeteredRequest
from openledger.gateway.schemas import ChatCompletionRequest, CompletionRequest
from openledger.gateway.state import Caller, GatewayState
from openledger.gateway.wire import Kind
from openledger.serve import SamplingParams
from openledger.serve.request import PromptInput
from openledger.types import Hash32

__all__ = ["Plan", "plan_request"]


@dataclass(frozen=True, slots=True)
class Plan:
    """One HTTP request, ready to run.

    Attributes:
        kind: ``"chat"`` or ``"text"`` (completions).
        endpoint: The path, for metrics.
        model: The ``model`` the client named (echoed in the response).
        response_id: ``chatcmpl-<hex>`` / ``cmpl-<hex>``; the hex is the receipt id's.
        created: Unix seconds.
        choices: The engine requests.
        stream: Whether to answer with server-sent events.
        include_usage: Whether a stream ends with a usage chunk.
        num_logprobs: Top log-probabilities per token, or None for none.
        metered: What its receipt records besides the outputs.
        labels: Metric labels of its adapters.
        engine_names: The adapter versions it runs with (``<name>@<serial>``).
        prompt_estimate: Its prompt tokens, estimated before tokenization (characters / 4).
    """

    kind: Kind
    endpoint: str
    model: str
    response_id: str
    created: int
    choices: list[Choice]
    stream: bool
    include_usage: bool
    num_logprobs: int | None
    metered: MeteredRequest
    labels: list[str]
    engine_names: tuple[str, ...] = ()
    prompt_estimate: float = 0.0


def plan_request(
    state: GatewayState, caller: Caller, request: ChatCompletionRequest | CompletionRequest
) -> Plan:
    """Check a request against the gateway's models and limits, and plan its choices.

    The adapters' current versions are read here, once: the request runs with them and
    its receipt names them, whatever replaces them while it waits.

    Raises:
        RequestFieldError: Over a limit, or fields that contradict each other.
        ModelNotFoundError: Unknown model or adapter.
        InvalidRequestError: Sampling parameters the engine refuses.
    """
    adapters = state.resolve(request.model, request.adapters)
    served = {name: state.adapters.current[name] for name in adapters}
    _check_limits(state, request)
    if isinstance(request, ChatCompletionRequest):
        kind: Kind = "chat"
        prompts: list[PromptInput] = [[m.as_engine_message() for m in request.messages]]
        prompt_input: Any = [m.model_dump(exclude_none=True) for m in request.messages]
    else:
        kind = "text"
        prompts = list(request.prompts)
        prompt_input = request.prompt
    # NOTE: texts for the attribution worker, only when there is something to attribute
    attributed = bool(adapters) and state.config.record_answers
    prompt_texts = _prompt_texts(state, request, prompts) if attributed else ()
    engine_adapters = {served[name].engine_name: weight for name, weight in adapters.items()}
    params = _params(state, request, engine_adapters)
    choices = [
        Choice(p * request.n + j, p, prompt, _nth(params, j))
        for p, prompt in enumerate(prompts)
        for j in range(request.n)
    ]
    token = secrets.token_hex(32)
    request_id = Hash32("0x" + token)
    metered = MeteredRequest(
        request_id=request_id,
        payer=caller.payer,
        adapters=adapters,
        adapter_ids={name: served[name].adapter_id for name in adapters},
        prompt_input=prompt_input,
        prompt_texts=prompt_texts,
    )
    return Plan(
        kind=kind,
        endpoint="/v1/chat/completions" if kind == "chat" else "/v1/completions",
        model=request.model,
        response_id=("chatcmpl-" if kind == "chat" else "cmpl-") + token,
        created=int(time.time()),
        choices=choices,
        stream=request.stream,
        include_usage=request.include_usage,
        num_logprobs=request.num_logprobs,
        metered=metered,
        labels=sorted(adapters) or [state.config.model_name],
        engine_names=tuple(sorted(engine_adapters)),
        prompt_estimate=len(json.dumps(prompt_input)) / 4,
    )


def _prompt_texts(
    state: GatewayState,
    request: ChatCompletionRequest | CompletionRequest,
    prompts: list[PromptInput],
) -> tuple[str, ...]:
    """Per prompt, what a training record would hold as its instruction: a chat's last
    user message; a completion's prompt (token ids decoded)."""
    if isinstance(request, ChatCompletionRequest):
        users = [m.as_engine_message()["content"] for m in request.messages if m.role == "user"]
        return (users[-1] if users else "",)
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            texts.append(str(state.engine.engine.tokenizer.decode(prompt)))
        else:
            texts.append("")
    return tuple(texts)


def _check_limits(state: GatewayState, request: ChatCompletionRequest | CompletionRequest) -> None:
    limits = state.config.limits
    if request.n > limits.max_n:
        raise RequestFieldError(f"n={request.n} is above this server's most, {limits.max_n}", "n")
    wanted = request.token_limit
    if limits.max_tokens is not None and wanted is not None and wanted > limits.max_tokens:
        param = "max_tokens" if request.max_tokens == wanted else "max_completion_tokens"
        raise RequestFieldError(
            f"{param}={wanted} is above this server's most, {limits.max_tokens}", param
        )
    if request.num_logprobs is not None and request.num_logprobs > limits.max_top_logprobs:
        param = "logprobs" if isinstance(request, CompletionRequest) else "top_logprobs"
        raise RequestFieldError(
            f"{param}={request.num_logprobs} is above this server's most, "
            f"{limits.max_top_logprobs}",
            param,
        )
    if isinstance(request, ChatCompletionRequest) and request.top_logprobs and not request.logprobs:
        raise RequestFieldError("top_logprobs needs logprobs: true", "top_logprobs")
    if isinstance(request, CompletionRequest):
        if not request.prompts or len(request.prompts) > limits.max_prompts:
            raise RequestFieldError(f"prompt must hold 1 to {limits.max_prompts} prompts", "prompt")
        if any(isinstance(p, list) and not p for p in request.prompts):
            raise RequestFieldError("a token-id prompt must not be empty", "prompt")


def _params(
    state: GatewayState,
    request: ChatCompletionRequest | CompletionRequest,
    adapters: Mapping[str, float],
) -> SamplingParams:
    engine = state.engine.engine
    limit = request.token_limit or state.config.limits.max_tokens or engine.max_model_len
    adapter: str | dict[str, float] | None = None
    if len(adapters) == 1 and request.adapters is None:
        adapter = next(iter(adapters))
    elif adapters:
        adapter = dict(adapters)
    return SamplingParams(
        max_tokens=limit,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=request.stop_strings,
        logprobs=request.num_logprobs,
        adapter=adapter,
        min_tokens=request.min_tokens,
        ignore_eos=request.ignore_eos,
    )


def _nth(params: SamplingParams, j: int) -> SamplingParams:
    """The j-th sample's parameters: a seeded request gets seed + j, so samples differ."""
    if j == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + j)
