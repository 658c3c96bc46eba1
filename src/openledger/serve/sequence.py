"""A request's token sequence and its place in the KV cache (torch-free bookkeeping)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from openledger.serve.params import SamplingParams

__all__ = ["FinishReason", "SequenceState", "SequenceStatus"]

FinishReason = Literal["stop", "length", "abort"]
"""Why a request finished: ``"stop"`` (EOS, a stop token or stop string), ``"length"``
(max tokens or the context), ``"abort"`` (cancelled)."""


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life: queued, in the running batch, or done."""

    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(slots=True, eq=False)
class SequenceState:
    """The tokens of one request and the KV-cache blocks that hold them.

    Invariant while RUNNING, between steps::

        token_ids   = prompt | outputs
        KV computed for token_ids[:num_computed_tokens]; num_computed_tokens < len(token_ids)
        (== len - 1 once the prompt is done: the last token is the next step's input)
        block_table holds ceil((len(token_ids) - 1) / block_size) blocks, or more

    Attributes:
        seq_id: Engine-unique id.
        token_ids: Prompt followed by the generated tokens.
        num_prompt_tokens: Length of the prompt.
        params: The request's sampling parameters.
        max_total_tokens: Stop with ``"length"`` once the sequence is this long (the
            prompt plus ``max_tokens``, capped by the model's context length).
        eos_token_ids: Token ids that end generation unless ``params.ignore_eos``.
        cache_salt: Folded into every prefix-cache hash; requests with different salts
            (e.g. different adapters) never share cached blocks.
        adapter_index: Adapter slot applied to this sequence's tokens; -1 for none.
        block_table: KV-cache block ids, in order.
        num_cached_tokens: Tokens found in the prefix cache at the last allocation.
        num_computed_tokens: Leading tokens whose KV is in the cache, counting the tokens
            scheduled for the current step (the scheduler advances it when it schedules).
        num_sealed_blocks: Leading blocks of ``block_table`` that are full and findable
            by content hash (prefix caching).
        status: Waiting, running or finished.
        finish_reason: Why it finished, once it has.
        num_preemptions: How often it was preempted (its KV recomputed).
        long_context: Whether its KV is computed in the long-context regime of a LongRoPE
            model (set at admission: the sequence is longer than the pretraining context;
            see :class:`~openledger.serve.scheduler.Scheduler`'s ``recompute_past``).
    """

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    max_total_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    cache_salt: str = ""
    adapter_index: int = -1
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    num_computed_tokens: int = 0
    num_sealed_blocks: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    long_context: bool = False

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def kv_salt(self) -> str:
        """What prefix-cache hashes fold in: the cache salt, and the long-context regime
        (blocks computed in one regime never serve the other)."""
        return self.cache_salt + "\x00long-context" if self.long_context else self.cache_salt

    @property
    def output_token_ids(self) -> list[int]:
        """The generated tokens so far."""
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        """How many tokens have been generated."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to compute before the next token can be sampled (>= 1 while running)."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        """Whether the sequence is done (stopped, at its length limit or aborted)."""
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> FinishReason | None:
        """Append a generated token and say whether it ends the sequence.

        Returns:
            ``"stop"`` for an end-of-sequence or stop token, ``"length"`` at the length
            limit, else None.
        """
        self.token_ids.append(token_id)
        stops = token_id in self.params.stop_token_ids
        if stops or (token_id in self.eos_token_ids and not self.params.ignore_eos):
            return "stop"
        if len(self.token_ids) >= self.max_total_tokens:
            return "length"
        return None
