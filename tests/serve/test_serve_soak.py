"""Soak: 500 requests, random lengths and cancellations, through a deliberately small pool."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from openledger.serve import Engine, EngineConfig, SamplingParams


@pytest.mark.slow
def test_500_requests_all_finish_or_cancel_and_no_block_leaks(
    tiny_checkpoints: dict[str, Path],
) -> None:
    rng = random.Random(5)
    engine = Engine(
        tiny_checkpoints["qwen2"],
        EngineConfig(
            block_size=4,
            num_blocks=40,
            max_num_seqs=12,
            max_model_len=64,
            max_num_batched_tokens=128,
        ),
    )
    pending = list(range(500))
    live: set[str] = set()
    done: dict[str, str] = {}
    preemptions = 0
    while pending or engine.has_unfinished_requests():
        for _ in range(rng.randint(0, 4)):
            if pending:
                pending.pop()
                prompt = [rng.randrange(3, 384) for _ in range(rng.randint(1, 24))]
                params = SamplingParams(
                    max_tokens=rng.randint(1, 16), ignore_eos=rng.random() < 0.5
                )
                live.add(engine.add_request(prompt, params))
        if live and rng.random() < 0.15:
            engine.abort_request(rng.choice(sorted(live)))
        for out in engine.step():
            if out.finished:
                live.discard(out.request_id)
                done[out.request_id] = out.finish_reason or ""
                preemptions += out.metrics.num_preemptions
    assert len(done) == 500
    assert set(done.values()) <= {"stop", "length", "abort"}
    assert "abort" in done.values()
    assert preemptions > 0
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks
