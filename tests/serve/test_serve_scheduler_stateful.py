"""Hypothesis state machine over Scheduler + BlockPool with a fake model.

The fake model's next token depends only on the sequence so far, so every sequence has
one right output whatever the batching, chunking, preemption or prefix sharing. A shadow
KV store records which token each cache slot holds: every position a step reads must hold
that sequence's own token (no block leaked to, overwritten by, or wrongly shared with
another). Every step must respect the token budget and the seat limit, give each running
sequence at least one token, and schedule whole prompts when chunked prefill is off.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from openledger.serve import SamplingParams
from openledger.serve.block_pool import BlockPool
from openledger.serve.scheduler import Scheduler, SchedulerOutput
from openledger.serve.sequence import SequenceState, SequenceStatus

EOS = 99


def fake_next(tokens: list[int]) -> int:
    """Deterministic next token from a small alphabet (so prefixes repeat), sometimes EOS."""
    value = (sum(tokens[-3:]) * 7 + len(tokens)) % 13
    return EOS if value == 12 else value % 4


def expected_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(fake_next(tokens))
        if tokens[-1] == EOS:
            break
    return tokens[len(prompt) :]


class SchedulerMachine(RuleBasedStateMachine):
    """Requests arrive, steps run, some get aborted; bookkeeping must stay exact."""

    @initialize(
        num_blocks=st.integers(4, 12),
        block_size=st.sampled_from([1, 2, 4]),
        max_num_seqs=st.integers(1, 4),
        extra_budget=st.integers(0, 14),
        caching=st.booleans(),
        chunked=st.booleans(),
        recompute_past=st.one_of(st.none(), st.integers(1, 12)),
    )
    def setup(
        self,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        extra_budget: int,
        caching: bool,
        chunked: bool,
        recompute_past: int | None,
    ) -> None:
        self.pool = BlockPool(num_blocks, block_size, enable_prefix_caching=caching)
        self.budget = max_num_seqs + extra_budget
        self.scheduler = Scheduler(
            self.pool,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=self.budget,
            enable_chunked_prefill=chunked,
            recompute_past=recompute_past,
        )
        # NOTE: what each KV slot holds: the token and the regime (LongRoPE's long
        # context or not) it was computed in; a sequence reads only its own regime's KV
        self.slots: dict[tuple[int, int], tuple[int, bool]] = {}
        self.seqs: list[SequenceState] = []
        self.prompts: dict[int, list[int]] = {}
        self.preempted = 0

    @rule(prompt=st.lists(st.integers(0, 3), min_size=1, max_size=12), max_tokens=st.integers(1, 8))
    def add(self, prompt: list[int], max_tokens: int) -> None:
        total = len(prompt) + max_tokens
        if self.pool.blocks_needed(total) > self.pool.num_blocks:
            return  # the engine refuses these up front
        if not self.scheduler.enable_chunked_prefill and total > self.budget:
            return  # likewise: without chunks, max_model_len <= max_num_batched_tokens
        seq = SequenceState(
            len(self.seqs),
            list(prompt),
            len(prompt),
            SamplingParams(max_tokens=max_tokens),
            total,
            eos_token_ids=frozenset({EOS}),
        )
        self.seqs.append(seq)
        self.prompts[seq.seq_id] = list(prompt)
        self.scheduler.add(seq)

    @rule()
    def step(self) -> None:
        running_before = list(self.scheduler.running)
        work = self.scheduler.schedule()
        if work is None:
            return
        self._check_budget(work, running_before)
        self.preempted += len(work.preempted)
        sampled = work.sampled
        past = self.scheduler.recompute_past
        for seq, num_new in zip(work.seqs, work.num_new_tokens, strict=True):
            # a sequence longer than the pretraining context is computed in the long regime
            assert seq.long_context == (past is not None and len(seq) > past)
            start = seq.num_computed_tokens - num_new
            self._check_reads(seq, start)
            for pos in range(start, seq.num_computed_tokens):
                self.slots[self._slot(seq, pos)] = (seq.token_ids[pos], seq.long_context)
        for seq in sampled:
            reason = seq.append_token(fake_next(seq.token_ids))
            if reason is not None:
                self.scheduler.finish(seq, reason)

    def _check_budget(self, work: SchedulerOutput, running_before: list[SequenceState]) -> None:
        scheduler = self.scheduler
        assert work.num_tokens <= scheduler.max_num_batched_tokens
        assert len(work.seqs) <= scheduler.max_num_seqs
        assert all(n >= 1 for n in work.num_new_tokens)
        assert not set(work.seqs) & set(work.preempted)
        # no starvation: every running sequence not preempted gets a token
        assert set(running_before) - set(work.preempted) <= set(work.seqs)
        for seq in work.seqs:
            assert 1 <= seq.num_computed_tokens <= len(seq)
            if seq.num_computed_tokens < len(seq):  # a chunk: only when the budget ran out
                assert scheduler.enable_chunked_prefill
                assert work.num_tokens == scheduler.max_num_batched_tokens

    @precondition(lambda self: any(not s.is_finished for s in self.seqs))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        live = [s for s in self.seqs if not s.is_finished]
        seq = data.draw(st.sampled_from(live))
        assert self.scheduler.abort(seq.seq_id) is seq
        assert self.scheduler.abort(seq.seq_id) is None

    def _slot(self, seq: SequenceState, pos: int) -> tuple[int, int]:
        size = self.pool.block_size
        return seq.block_table[pos // size], pos % size

    def _check_reads(self, seq: SequenceState, start: int) -> None:
        for pos in range(start):
            expected = (seq.token_ids[pos], seq.long_context)
            assert self.slots.get(self._slot(seq, pos)) == expected, (seq.seq_id, pos)

    @invariant()
    def blocks_are_accounted_for(self) -> None:
        if not hasattr(self, "pool"):
            return
        pool = self.pool
        live = [s for s in self.seqs if s.status is SequenceStatus.RUNNING]
        assert all(not s.block_table for s in self.seqs if s.status is not SequenceStatus.RUNNING)
        assert sum(b.ref_count for b in pool.blocks) == sum(len(s.block_table) for s in live)
        assert set(pool._free) == {b.block_id for b in pool.blocks if b.ref_count == 0}
        for block_hash, block_id in pool._cached.items():
            assert pool.blocks[block_id].block_hash == block_hash
        assert len(self.scheduler.running) <= self.scheduler.max_num_seqs

    def teardown(self) -> None:
        if not hasattr(self, "pool"):
            return
        for _ in range(2000):
            if not self.scheduler.has_unfinished():
                break
            self.step()
        assert not self.scheduler.has_unfinished()
        assert self.pool.num_free_blocks == self.pool.num_blocks
        for seq in self.seqs:
            if seq.finish_reason != "abort":
                assert seq.output_token_ids == expected_output(
                    self.prompts[seq.seq_id], seq.params.max_tokens
                )


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_preemption_happens_and_outputs_survive_it() -> None:
    """A pool of 3 blocks of 2 for 3 growing sequences forces recompute preemption."""
    pool = BlockPool(3, 2)
    scheduler = Scheduler(pool, max_num_seqs=3, max_num_batched_tokens=16)
    eos = frozenset({EOS})
    seqs = [SequenceState(i, [i, 1], 2, SamplingParams(max_tokens=4), 6, eos) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    preempted = 0
    while scheduler.has_unfinished():
        work = scheduler.schedule()
        assert work is not None
        preempted += len(work.preempted)
        for seq in work.sampled:
            if (reason := seq.append_token(fake_next(seq.token_ids))) is not None:
                scheduler.finish(seq, reason)
    assert preempted > 0
    assert [s.output_token_ids for s in seqs] == [expected_output([i, 1], 4) for i in range(3)]
    assert pool.num_free_blocks == 3
