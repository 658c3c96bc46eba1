"""Continuous batching: which sequences run in the next step (torch-free).

Each step is either a *prefill* (whole prompts of newly admitted sequences) or a *decode*
(one token for every running sequence). Prefill goes first whenever the oldest waiting
sequence fits, so new requests join at the next step boundary; finished ones leave at once.

    waiting (FIFO) --prefill--> running --finish/abort--> freed
        ^                          |
        +------ preempt (LIFO) ----+   blocks freed; its KV is recomputed on re-admission

Admission is strictly FIFO: a waiting sequence that does not fit blocks the ones behind it.
When a decode step lacks a block, the most recently admitted running sequence is preempted
(recompute), and goes back to the *front* of the waiting queue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from openledger.exceptions import ConfigError
from openledger.serve.block_pool import BlockPool
from openledger.serve.sequence import FinishReason, Sequence, SequenceStatus

__all__ = ["Scheduler", "SchedulerOutput"]


@dataclass(slots=True)
class SchedulerOutput:
    """The work of one step.

    Attributes:
        seqs: Sequences to run, in batch order.
        is_prefill: True for a prefill step (tokens from ``num_cached_tokens`` on), False
            for a decode step (the last token of each).
        preempted: Sequences preempted while scheduling this step.
    """

    seqs: list[Sequence]
    is_prefill: bool
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Tokens the model computes in this step."""
        if not self.is_prefill:
            return len(self.seqs)
        return sum(len(seq) - seq.num_cached_tokens for seq in self.seqs)


class Scheduler:
    """FIFO continuous-batching scheduler over a :class:`BlockPool`.

    Args:
        block_pool: Where KV blocks come from.
        max_num_seqs: Most sequences running at once.
        max_num_batched_tokens: Most tokens computed in one step; a prompt longer than this
            can never be admitted (the engine refuses it up front).
    """

    def __init__(self, block_pool: BlockPool, *, max_num_seqs: int, max_num_batched_tokens: int):
        if max_num_seqs < 1 or max_num_batched_tokens < max_num_seqs:
            raise ConfigError(
                f"need 1 <= max_num_seqs <= max_num_batched_tokens, got {max_num_seqs}, "
                f"{max_num_batched_tokens}"
            )
        self.block_pool = block_pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence at the back of the waiting queue."""
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        """Whether any sequence is waiting or running."""
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput | None:
        """Pick the next step's sequences and give them KV slots; None when idle."""
        seqs = self._schedule_prefill()
        if seqs:
            return SchedulerOutput(seqs, is_prefill=True)
        if not self.running:
            return None
        return self._schedule_decode()

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Mark a running sequence finished and free its blocks."""
        self.running.remove(seq)
        self._retire(seq, reason)

    def abort(self, seq_id: int) -> Sequence | None:
        """Remove a waiting or running sequence; None when it is not (or no longer) here."""
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.seq_id == seq_id:
                    queue.remove(seq)
                    self._retire(seq, "abort")
                    return seq
        return None

    def _retire(self, seq: Sequence, reason: FinishReason) -> None:
        self.block_pool.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _schedule_prefill(self) -> list[Sequence]:
        scheduled: list[Sequence] = []
        num_tokens = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            too_many = num_tokens + len(seq) > self.max_num_batched_tokens
            if too_many or not self.block_pool.can_allocate(seq):
                break
            num_tokens += len(seq) - self.block_pool.allocate(seq)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(seq)
        return scheduled

    def _schedule_decode(self) -> SchedulerOutput:
        scheduled: list[Sequence] = []
        preempted: list[Sequence] = []
        while self.running:
            seq = self.running.popleft()
            while not self.block_pool.can_append(seq):
                victim = self.running.pop() if self.running else seq
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                self.block_pool.append_slot(seq)
                scheduled.append(seq)
        self.running.extend(scheduled)
        return SchedulerOutput(scheduled, is_prefill=False, preempted=preempted)

    def _preempt(self, seq: Sequence) -> None:
        self.block_pool.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
