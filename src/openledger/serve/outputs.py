"""What the engine reports per request: text, tokens, finish reason and timings."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field

from openledger.serve.sequence import FinishReason

__all__ = ["RequestMetrics", "RequestOutput", "RequestUsage"]


@dataclass(slots=True)
class RequestMetrics:
    """Timings (``time.perf_counter`` seconds) and token counts of one request.

    Attributes:
        arrival_time: When the request was added.
        token_times: When each generated token became available.
        finished_time: When the request finished, or None.
        num_prompt_tokens: Prompt length in tokens.
        num_cached_tokens: Prompt tokens served from the prefix cache at first admission.
        num_preemptions: How often its KV cache was dropped and recomputed.
    """

    arrival_time: float
    token_times: list[float] = field(default_factory=list)
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0

    @property
    def num_generated_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.token_times)

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from arrival to the first generated token (TTFT)."""
        return self.token_times[0] - self.arrival_time if self.token_times else None

    @property
    def inter_token_latencies(self) -> list[float]:
        """Seconds between consecutive generated tokens (ITL)."""
        times = self.token_times
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    @property
    def mean_inter_token_latency(self) -> float | None:
        """Mean ITL, None with fewer than two tokens."""
        gaps = self.inter_token_latencies
        return statistics.fmean(gaps) if gaps else None


@dataclass(frozen=True, slots=True)
class RequestUsage:
    """What a finished request consumed, for attribution and billing.

    Attributes:
        prompt_tokens: Tokens of the prompt.
        completion_tokens: Tokens generated.
        adapters: Names of the adapters applied, sorted (empty for the base model).
        adapter_weights: Each adapter's weight (1.0 for a single adapter).
        adapter_ids: Each adapter's id from its ``openledger_manifest.json`` (None
            for an adapter without a manifest).
    """

    prompt_tokens: int
    completion_tokens: int
    adapters: tuple[str, ...] = ()
    adapter_weights: tuple[float, ...] = ()
    adapter_ids: tuple[str | None, ...] = ()


@dataclass(slots=True)
class RequestOutput:
    """A request's state after a step.

    Attributes:
        request_id: The id given or assigned at :meth:`Engine.add_request`.
        prompt: The prompt text (rendered chat template for messages; None for token ids).
        prompt_token_ids: The tokenised prompt.
        text: Generated text so far (without a matched stop string).
        token_ids: Generated tokens so far.
        delta_text: Text new since this request's previous output (for streaming); while
            running, a tail that may still become a stop string is held back.
        finished: Whether the request is done.
        finish_reason: ``"stop"`` (EOS, stop token or stop string), ``"length"``
            (max_tokens or context) or ``"abort"``; None while running.
        logprobs: Per generated token ``{token_id: logprob}`` when asked for.
        metrics: Timings and counts.
        usage: Tokens and adapters consumed; set once the request has finished.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    delta_text: str
    finished: bool
    finish_reason: FinishReason | None
    logprobs: list[dict[int, float]] | None
    metrics: RequestMetrics
    usage: RequestUsage | None = None
