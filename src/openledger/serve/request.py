"""Prompt normalisation and the per-request state the engine keeps beside its sequence."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from openledger.exceptions import InvalidRequestError
from openledger.serve.block_pool import BlockPool
from openledger.serve.detokenizer import IncrementalDetokenizer
from openledger.serve.outputs import RequestMetrics, RequestOutput
from openledger.serve.params import SamplingParams
from openledger.serve.sequence import FinishReason, SequenceState

__all__ = [
    "AdapterChoice",
    "ChatMessage",
    "PromptInput",
    "RequestLimits",
    "RequestState",
    "is_single_prompt",
    "params_per_prompt",
    "tokenize_prompt",
    "with_adapter",
]

ChatMessage: TypeAlias = Mapping[str, Any]
PromptInput: TypeAlias = "str | Sequence[ChatMessage] | Sequence[int]"
"""A prompt: text, chat messages (``[{"role": ..., "content": ...}]``) or token ids."""
AdapterChoice: TypeAlias = "str | Mapping[str, float]"
"""A registered adapter's name, or a weighted mix ``{name: weight}``."""


def is_single_prompt(prompt: object) -> bool:
    """Whether ``prompt`` is one prompt (text, messages, token ids) rather than a batch."""
    if isinstance(prompt, str):
        return True
    if isinstance(prompt, Sequence) and prompt:
        return isinstance(prompt[0], (Mapping, int))
    return False


def tokenize_prompt(tokenizer: Any, prompt: object) -> tuple[str | None, list[int]]:
    """Turn a prompt into ``(text, token ids)``; chat messages go through the chat template.

    Raises:
        InvalidRequestError: Empty prompt, wrong type, or a chat prompt for a tokenizer
            without a chat template.
    """
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt is empty")
        return prompt, list(tokenizer(prompt).input_ids)
    if not isinstance(prompt, Sequence) or not prompt:
        raise InvalidRequestError(
            f"prompt must be text, chat messages or token ids, got {prompt!r:.80}"
        )
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return None, list(prompt)
    if all(isinstance(m, Mapping) and "role" in m and "content" in m for m in prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequestError("chat messages given, but the tokenizer has no chat template")
        text = tokenizer.apply_chat_template(
            list(prompt), add_generation_prompt=True, tokenize=False
        )
        return text, list(tokenizer(text, add_special_tokens=False).input_ids)
    raise InvalidRequestError(
        "a prompt list must hold only token ids or only {'role', 'content'} messages"
    )


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What a request's tokens must fit: the vocabulary, the context and the KV cache.

    Attributes:
        vocab_size: Token ids must be below it.
        max_model_len: Prompt + output tokens of one sequence.
        block_pool: The KV cache (a request that could not fit it alone is refused).
    """

    vocab_size: int
    max_model_len: int
    block_pool: BlockPool

    def check(self, token_ids: list[int], params: SamplingParams) -> None:
        """Refuse a prompt that the engine could not finish.

        Raises:
            InvalidRequestError: A token id outside the vocabulary, a prompt that fills the
                context, or prompt + ``max_tokens`` needing more blocks than the cache has.
        """
        if any(not 0 <= token < self.vocab_size for token in token_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {self.vocab_size})")
        if len(token_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(token_ids)} tokens; the context holds {self.max_model_len} "
                "(prompt + at least one generated token). Shorten the prompt."
            )
        total = self.total_tokens(len(token_ids), params)
        pool = self.block_pool
        if pool.blocks_needed(total) > pool.num_blocks:
            raise InvalidRequestError(
                f"prompt + max_tokens = {total} tokens needs more KV blocks than the cache has "
                f"({pool.num_blocks} x {pool.block_size}); lower max_tokens "
                "or raise EngineConfig.kv_cache_memory"
            )

    def total_tokens(self, num_prompt_tokens: int, params: SamplingParams) -> int:
        """The most tokens the sequence can reach."""
        return min(num_prompt_tokens + params.max_tokens, self.max_model_len)


def params_per_prompt(
    num_prompts: int, params: SamplingParams | Sequence[SamplingParams] | None
) -> list[SamplingParams]:
    """One :class:`SamplingParams` per prompt (default greedy for all).

    Raises:
        InvalidRequestError: A list of another length.
    """
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * num_prompts
    per_prompt = list(params)
    if len(per_prompt) != num_prompts:
        raise InvalidRequestError(f"{len(per_prompt)} SamplingParams for {num_prompts} prompts")
    return per_prompt


def with_adapter(params: SamplingParams | None, adapter: AdapterChoice | None) -> SamplingParams:
    """``params`` with ``adapter`` set (it must not contradict an adapter already set).

    Raises:
        InvalidRequestError: ``params`` names another adapter.
    """
    params = params or SamplingParams()
    if adapter is None:
        return params
    if params.adapter is not None and params.adapter != adapter:
        raise InvalidRequestError(
            f"adapter={adapter!r} contradicts SamplingParams(adapter={params.adapter!r})"
        )
    return dataclasses.replace(params, adapter=adapter)


@dataclass(slots=True)
class RequestState:
    """Everything the engine tracks for one request beyond its :class:`Sequence`."""

    request_id: str
    prompt: str | None
    seq: SequenceState
    detokenizer: IncrementalDetokenizer
    metrics: RequestMetrics
    logprobs: list[dict[int, float]] | None

    @classmethod
    def create(
        cls,
        request_id: str,
        prompt: str | None,
        seq: SequenceState,
        detokenizer: IncrementalDetokenizer,
    ) -> RequestState:
        """A fresh state, arriving now."""
        metrics = RequestMetrics(time.perf_counter(), num_prompt_tokens=seq.num_prompt_tokens)
        logprobs: list[dict[int, float]] | None = [] if seq.params.logprobs is not None else None
        return cls(request_id, prompt, seq, detokenizer, metrics, logprobs)

    def add_token(
        self, token_id: int, logprobs: dict[int, float] | None, now: float
    ) -> FinishReason | None:
        """Record a sampled token; return why the request finished, if it did."""
        if not self.metrics.token_times:
            self.metrics.num_cached_tokens = self.seq.num_cached_tokens
        self.metrics.token_times.append(now)
        if self.logprobs is not None and logprobs is not None:
            self.logprobs.append(logprobs)
        reason = self.seq.append_token(token_id)
        stopped = self.detokenizer.add_token(token_id)
        return "stop" if stopped else reason

    def output(self) -> RequestOutput:
        """Snapshot for the caller; advances the streamed-text cursor."""
        finished = self.seq.is_finished
        if finished and self.seq.finish_reason != "abort":
            self.detokenizer.finish()
        self.metrics.num_preemptions = self.seq.num_preemptions
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.seq.token_ids[: self.seq.num_prompt_tokens],
            text=self.detokenizer.text,
            token_ids=self.seq.output_token_ids,
            delta_text=self.detokenizer.take_delta(final=finished),
            finished=finished,
            finish_reason=self.seq.finish_reason,
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            metrics=self.metrics,
        )
