"""Prompt normalisation and the per-request state the engine keeps beside its sequence."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from openledger.exceptions import InvalidRequestError
from openledger.serve.detokenizer import IncrementalDetokenizer
from openledger.serve.outputs import RequestMetrics, RequestOutput
from openledger.serve.sequence import FinishReason, SequenceState

__all__ = ["ChatMessage", "PromptInput", "RequestState", "is_single_prompt", "tokenize_prompt"]

ChatMessage: TypeAlias = Mapping[str, Any]
PromptInput: TypeAlias = "str | Sequence[ChatMessage] | Sequence[int]"
"""A prompt: text, chat messages (``[{"role": ..., "content": ...}]``) or token ids."""


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
