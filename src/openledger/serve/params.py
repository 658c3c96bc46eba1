"""Per-request sampling parameters (torch-free)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from openledger.exceptions import InvalidRequestError

__all__ = ["SamplingParams"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples and when it stops.

    The default is greedy decoding of up to 16 tokens.

    Attributes:
        max_tokens: Most tokens to generate (>= 1); generation also stops at the model's
            context length.
        min_tokens: End-of-sequence and stop tokens cannot be chosen before this many
            tokens are generated (like transformers' ``min_new_tokens``).
        temperature: 0 for greedy (argmax); otherwise logits are divided by it.
        top_k: Keep only the k most likely tokens; 0 keeps all.
        top_p: Keep the smallest set of most likely tokens whose mass reaches top_p (0, 1].
        repetition_penalty: > 1 discourages tokens already in the prompt or output
            (positive logits divided by it, negative ones multiplied), as in transformers.
        seed: Seed of this request's own random stream; the same seed, prompt and parameters
            give the same tokens whatever else is in the batch. None draws from the engine's.
        stop: Strings that end generation (a str or a sequence of them); the output text
            stops just before the match.
        stop_token_ids: Extra token ids that end generation (kept in the output tokens).
        ignore_eos: Keep generating past end-of-sequence tokens (benchmarks).
        logprobs: None for no log-probabilities; n >= 0 reports the chosen token's
            log-probability and the n most likely tokens' at each step.
        skip_special_tokens: Leave special tokens out of the output text.
        adapter: None for the base model, a registered adapter's name, or a weighted mix
            ``{"a": 0.7, "b": 0.3}`` computed exactly at inference (the sum of each
            adapter's update times its weight, as PEFT's ``cat`` combination).
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())
    stop_token_ids: tuple[int, ...] = field(default=())
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    adapter: str | Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        # NOTE: frozen dataclass; normalise list/str arguments through object.__setattr__.
        raw_stop: object = self.stop
        stop = (raw_stop,) if isinstance(raw_stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.min_tokens > self.max_tokens:
            raise InvalidRequestError(
                f"min_tokens={self.min_tokens} exceeds max_tokens={self.max_tokens}"
            )
        _check_float("temperature", self.temperature, low=0.0)
        _check_int("top_k", self.top_k, low=0)
        _check_float("top_p", self.top_p, low=0.0, high=1.0)
        if self.top_p == 0.0:
            raise InvalidRequestError("top_p must be in (0, 1], got 0")
        _check_float("repetition_penalty", self.repetition_penalty, low=0.0)
        if self.repetition_penalty == 0.0:
            raise InvalidRequestError("repetition_penalty must be > 0, got 0")
        if self.seed is not None:
            _check_int("seed", self.seed, low=0)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0)
        _check_stops(self.stop, self.stop_token_ids)
        _check_adapter(self.adapter)

    @property
    def greedy(self) -> bool:
        """Whether this request takes the argmax at every step."""
        return self.temperature == 0.0


def _check_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise InvalidRequestError(f"{name} must be >= {low}, got {value}")


def _check_float(name: str, value: object, *, low: float, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}")
    if not (low <= value <= high) or math.isnan(value):
        raise InvalidRequestError(f"{name} must be in [{low}, {high}], got {value}")


def _check_stops(stop: Sequence[object], stop_token_ids: Sequence[object]) -> None:
    for text in stop:
        if not isinstance(text, str) or not text:
            raise InvalidRequestError(f"stop strings must be non-empty str, got {text!r}")
    for token in stop_token_ids:
        _check_int("stop_token_ids[...]", token, low=0)


def _check_adapter(adapter: object) -> None:
    if adapter is None or (isinstance(adapter, str) and adapter):
        return
    if not isinstance(adapter, Mapping) or not adapter:
        raise InvalidRequestError(
            f"adapter must be None, a name or a non-empty {{name: weight}} mapping, got {adapter!r}"
        )
    for name, weight in adapter.items():
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"adapter names must be non-empty str, got {name!r}")
        _check_float(f"adapter[{name!r}]", weight, low=-math.inf)
