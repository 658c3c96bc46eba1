"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step has a budget of ``max_num_batched_tokens`` tokens. Each sequence gets a number
of tokens to compute (vLLM v1 style), so one step can carry prompt chunks and decode
tokens together:

1. running sequences, oldest first: all their uncomputed tokens (1 in decode; the rest
   of the prompt, or a chunk of it), always leaving one token of budget for each running
   sequence after them, so decodes never starve behind a long prompt;
2. then waiting sequences (FIFO) while budget, ``max_num_seqs`` and free blocks allow:
   their prompt, chunked to the remaining budget when chunked prefill is on (off: the
   whole prompt must fit the budget, else admission waits for a later step).

A sequence is sampled in the step that computes its last token; a step that computes
only part of a prompt samples nothing for it.

    waiting (FIFO) --admit--> running --finish/abort--> freed
        ^                          |
        +------ preempt (LIFO) ----+   blocks freed; its KV is recomputed on re-admission

Admission is strictly FIFO: a waiting sequence that does not fit blocks the ones behind it.
When a running sequence needs a block and none is free, the most recently admitted running
sequence is preempted (recompute) and goes back to the *front* of the waiting queue; no
sequence is admitted in a step that preempted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from openledger.exceptions import ConfigError
from openledger.serve.block_pool import BlockPool
from openledger.serve.sequence import FinishReason, SequenceState, SequenceStatus

__all__ = ["Scheduler", "SchedulerOutput"]


@dataclass(slots=True)
class SchedulerOutput:
    """The work of one step.

    Attributes:
        seqs: Sequences to run, in batch order.
        num_new_tokens: Tokens each sequence computes in this step: its tokens
            ``num_computed_tokens - n`` up to ``num_computed_tokens`` (already advanced).
        preempted: Sequences preempted while scheduling this step.
    """

    seqs: list[SequenceState]
    num_new_tokens: list[int]
    preempted: list[SequenceState] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Tokens the model computes in this step."""
        return sum(self.num_new_tokens)

    @property
    def is_prefill(self) -> bool:
        """Whether any sequence computes more than one token (prompt work in the step)."""
        return any(n > 1 for n in self.num_new_tokens)

    @property
    def sampled(self) -> list[SequenceState]:
        """The sequences whose next token this step samples (all their tokens computed)."""
        return [seq for seq in self.seqs if seq.num_computed_tokens == len(seq)]


class Scheduler:
    """FIFO continuous-batching scheduler over a :class:`BlockPool`.

    Args:
        block_pool: Where KV blocks come from.
        max_num_seqs: Most sequences running at once.
        max_num_batched_tokens: Most tokens computed in one step (>= ``max_num_seqs``).
        enable_chunked_prefill: Split prompts over steps to fit the budget; when off, a
            prompt longer than ``max_num_batched_tokens`` can never be admitted (the
            engine refuses it up front).
        recompute_past: A LongRoPE model's pretraining context (None for other models): a
            sequence longer than this is computed in the long regime from its first token
            (``SequenceState.long_context``), and one that grows past it while running is
            preempted once, so its whole KV is recomputed in that regime, as transformers
            does when generating.
    """

    def __init__(
        self,
        block_pool: BlockPool,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
        recompute_past: int | None = None,
    ):
        if max_num_seqs < 1 or max_num_batched_tokens < max_num_seqs:
            raise ConfigError(
                f"need 1 <= max_num_seqs <= max_num_batched_tokens, got {max_num_seqs}, "
                f"{max_num_batched_tokens}"
            )
        self.block_pool = block_pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.recompute_past = recompute_past
        self.waiting: deque[SequenceState] = deque()
        self.running: deque[SequenceState] = deque()

    def add(self, seq: SequenceState) -> None:
        """Queue a new sequence at the back of the waiting queue."""
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        """Whether any sequence is waiting or running."""
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput | None:
        """Pick the next step's sequences and token counts, give them KV slots.

        Returns:
            The step, or None when nothing is waiting or running. A step may be empty
            (no sequence fits yet) only if nothing is running.
        """
        if not self.has_unfinished():
            return None
        work = SchedulerOutput([], [])
        budget = self._schedule_running(work, self.max_num_batched_tokens)
        if not work.preempted:
            self._schedule_waiting(work, budget)
        return work

    def finish(self, seq: SequenceState, reason: FinishReason) -> None:
        """Mark a running sequence finished and free its blocks."""
        self.running.remove(seq)
        self._retire(seq, reason)

    def abort(self, seq_id: int) -> SequenceState | None:
        """Remove a waiting or running sequence; None when it is not (or no longer) here."""
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.seq_id == seq_id:
                    queue.remove(seq)
                    self._retire(seq, "abort")
                    return seq
        return None

    def _retire(self, seq: SequenceState, reason: FinishReason) -> None:
        self.block_pool.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _schedule_running(self, work: SchedulerOutput, budget: int) -> int:
        """Schedule the running sequences in admission order; returns the budget left."""
        scheduled: list[SequenceState] = []
        while self.running:
            seq = self.running.popleft()
            if self._crosses(seq):
                self._preempt(seq)  # NOTE: its KV is of the short regime; recompute it all
                work.preempted.append(seq)
                continue
            if not self._make_room(seq, work.preempted):
                continue
            # NOTE: max_num_seqs <= max_num_batched_tokens, so after reserving one token
            # for each sequence still in `running`, at least one is left for this one.
            num_new = min(seq.num_uncomputed_tokens, budget - len(self.running))
            budget -= num_new
            self._take(seq, num_new, work)
            scheduled.append(seq)
        self.running.extend(scheduled)
        return budget

    def _make_room(self, seq: SequenceState, preempted: list[SequenceState]) -> bool:
        """Give ``seq`` a block for its next token, preempting from the back if needed;
        False when ``seq`` itself had to be preempted."""
        while not self.block_pool.can_append(seq):
            victim = self.running.pop() if self.running else seq
            self._preempt(victim)
            preempted.append(victim)
            if victim is seq:
                return False
        self.block_pool.append_slot(seq)
        return True

    def _schedule_waiting(self, work: SchedulerOutput, budget: int) -> None:
        """Admit waiting sequences in FIFO order while budget, seats and blocks allow."""
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            whole_prompt_fits = len(seq) <= budget
            if not (whole_prompt_fits or self.enable_chunked_prefill):
                break
            if not self.block_pool.can_allocate(seq):
                break
            self.waiting.popleft()
            seq.long_context = self._long(seq)  # NOTE: before the prefix-cache lookup
            seq.num_computed_tokens = self.block_pool.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            budget -= num_new
            self._take(seq, num_new, work)

    def _long(self, seq: SequenceState) -> bool:
        """Whether ``seq`` is longer than the pretraining context (LongRoPE models)."""
        return self.recompute_past is not None and len(seq) > self.recompute_past

    def _crosses(self, seq: SequenceState) -> bool:
        """Whether running ``seq`` has grown past the pretraining context with its KV
        computed in the short regime."""
        return not seq.long_context and self._long(seq)

    def _take(self, seq: SequenceState, num_new: int, work: SchedulerOutput) -> None:
        seq.num_computed_tokens += num_new
        self.block_pool.seal(seq, seq.num_computed_tokens)
        work.seqs.append(seq)
        work.num_new_tokens.append(num_new)

    def _preempt(self, seq: SequenceState) -> None:
        self.block_pool.free(seq)  # NOTE: also resets num_computed_tokens
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
