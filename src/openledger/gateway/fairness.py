"""Sharing the engine across API keys: virtual token counters, and tokens-per-minute limits.

:class:`FairQueue` admits requests into the engine in the order of the Virtual Token
Counter (VTC) of Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024),
the policy S-LoRA serves with. Each key has a counter of the tokens served to it::

    join(key)       a key with nothing waiting or running (newly active) has its counter
                    lifted to the smallest counter of the keys that are active, so idle
                    time banks no credit
    dispatch        while engine sequences are free: the waiting request of the key with
                    the smallest counter goes next (ties: the earliest arrival); its
                    prompt tokens (estimated) are added to the counter
    charge()        generated tokens are added as they stream (weight 2, as the paper's
                    output tokens)

A key that floods the gateway therefore waits behind every other active key once its
counter is ahead; another key's request waits at most for one sequence of the flood to
finish. The queue lives in front of the engine (it caps the sequences submitted at once,
``capacity``), so the engine's own scheduler stays first-come first-served.

:class:`TokenBuckets` limits each key to ``tokens_per_minute`` prompt plus completion
tokens: a bucket of that size refilling continuously; usage is charged as it is served
(a request may take the bucket below zero), and a key whose bucket is empty is refused
with the seconds until it refills above zero.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from openledger.exceptions import TokenRateLimitError

__all__ = ["FairQueue", "TokenBuckets", "Turn"]

PROMPT_WEIGHT = 1.0
COMPLETION_WEIGHT = 2.0


@dataclass(eq=False, slots=True)
class Turn:
    """One request's place in the :class:`FairQueue`.

    Attributes:
        key: The API key's id.
        need: Engine sequences it runs (its choices).
        prompt_tokens: Its prompt tokens as estimated before tokenization.
        arrival: Its arrival number (ties between keys go to the earliest).
        granted: Whether it may run in the engine now.
        done: Whether it has left the queue.
    """

    key: str
    need: int
    prompt_tokens: float
    arrival: int
    granted: bool = False
    done: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)


class FairQueue:
    """Virtual-token-counter admission of requests into at most ``capacity`` sequences.

    Args:
        capacity: Engine sequences running at once (a request larger than this runs alone).
        enabled: When False every request is granted at once (the engine's own queue,
            first come first served, decides).
    """

    def __init__(self, capacity: int, *, enabled: bool = True) -> None:
        self.capacity = capacity if enabled else sys.maxsize
        self.counters: dict[str, float] = {}
        self.used = 0
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, deque[Turn]] = {}
        self._arrivals = 0

    @property
    def num_waiting(self) -> int:
        """Requests waiting for their turn."""
        return sum(len(turns) for turns in self._waiting.values())

    def join(self, key: str, need: int, prompt_tokens: float = 0.0) -> Turn:
        """Queue a request of ``key``; it may be granted at once (see :attr:`Turn.granted`)."""
        if not self._active(key):
            others = [self.counters.get(k, 0.0) for k in self._active_keys() if k != key]
            if others:
                self.counters[key] = max(self.counters.get(key, 0.0), min(others))
        self.counters.setdefault(key, 0.0)
        self._arrivals += 1
        turn = Turn(key, max(1, need), prompt_tokens, self._arrivals)
        self._waiting.setdefault(key, deque()).append(turn)
        self._dispatch()
        return turn

    async def wait(self, turn: Turn) -> None:
        """Return once ``turn`` is granted."""
        if not turn.granted:
            await turn.event.wait()

    def charge(self, key: str, completion_tokens: int) -> None:
        """Add generated tokens to ``key``'s counter."""
        if completion_tokens:
            self.counters[key] = self.counters.get(key, 0.0) + COMPLETION_WEIGHT * completion_tokens

    def leave(self, turn: Turn) -> None:
        """Take ``turn`` out: its sequences are free (granted) or its wait ends (idempotent)."""
        if turn.done:
            return
        turn.done = True
        if turn.granted:
            self.used -= turn.need
            self._running[turn.key] -= turn.need
            if self._running[turn.key] <= 0:
                del self._running[turn.key]
        else:
            waiting = self._waiting.get(turn.key)
            if waiting is not None and turn in waiting:
                waiting.remove(turn)
                if not waiting:
                    del self._waiting[turn.key]
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiting:
            key = min(self._waiting, key=lambda k: (self.counters[k], self._waiting[k][0].arrival))
            head = self._waiting[key][0]
            if self.used and self.used + head.need > self.capacity:
                return  # NOTE: no skipping ahead: the smallest counter keeps its claim
            self._waiting[key].popleft()
            if not self._waiting[key]:
                del self._waiting[key]
            self.used += head.need
            self._running[key] += head.need
            self.counters[key] += PROMPT_WEIGHT * head.prompt_tokens
            head.granted = True
            head.event.set()

    def _active(self, key: str) -> bool:
        return key in self._waiting or key in self._running

    def _active_keys(self) -> set[str]:
        return set(self._waiting) | set(self._running)


class TokenBuckets:
    """Per-key tokens-per-minute limits (prompt + completion).

    Args:
        tokens_per_minute: Each key's budget; None for no limit.
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self, tokens_per_minute: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._levels: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> None:
        """Pass if ``key`` may send a request now.

        Raises:
            TokenRateLimitError: Its bucket is empty; ``retry_after`` says for how long.
        """
        if self.tokens_per_minute is None:
            return
        level = self.level(key)
        if level > 0:
            return
        rate = self.tokens_per_minute / 60.0
        retry_after = max(1, math.ceil((1 - level) / rate))
        raise TokenRateLimitError(
            f"this key has used its {self.tokens_per_minute} tokens per minute; "
            f"retry in {retry_after} s",
            retry_after,
        )

    def charge(self, key: str, tokens: int) -> None:
        """Take ``tokens`` out of ``key``'s bucket (it may go below zero)."""
        if self.tokens_per_minute is None or not tokens:
            return
        self._levels[key] = (self.level(key) - tokens, self._clock())

    def level(self, key: str) -> float:
        """Tokens ``key`` may still use now (negative: owed)."""
        full = float(self.tokens_per_minute or 0)
        level, since = self._levels.get(key, (full, self._clock()))
        return min(full, level + (self._clock() - since) * full / 60.0)
