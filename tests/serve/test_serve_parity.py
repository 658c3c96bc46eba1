"""Greedy tokens equal transformers ``generate`` (fp32, CPU), however requests are batched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.serve.conftest import CHECKPOINTS

from openledger.serve import Engine, EngineConfig, RequestOutput, SamplingParams

PROMPTS = [
    "The capital of France is",
    "A LoRA adapter adds a low-rank update B A to a frozen weight matrix W. Rewards are",
    "def add(a, b):",
    "Ünïcödé wörds, naïve café, 東京",
    "Numbers: 0 1 2 3",
]
HfGreedy = Callable[[Path, list[int], int], list[int]]


def _run_staggered(engine: Engine, prompts: list[str], max_tokens: int) -> dict[str, RequestOutput]:
    """Two requests start; the others join one by one while those are mid-generation."""
    params = SamplingParams(max_tokens=max_tokens)
    pending = list(prompts)
    ids = [engine.add_request(pending.pop(0), params) for _ in range(2)]
    finals: dict[str, RequestOutput] = {}
    steps = 0
    while engine.has_unfinished_requests() or pending:
        steps += 1
        if pending and steps % 3 == 0:
            ids.append(engine.add_request(pending.pop(0), params))
        finals.update({out.request_id: out for out in engine.step() if out.finished})
    return {prompt: finals[rid] for prompt, rid in zip(prompts, ids, strict=True)}


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_greedy_tokens_match_transformers(
    name: str, tiny_checkpoints: dict[str, Path], hf_greedy: HfGreedy
) -> None:
    folder = tiny_checkpoints[name]
    engine = Engine(folder, EngineConfig(block_size=4, num_blocks=96, max_num_seqs=3))
    outputs = _run_staggered(engine, PROMPTS, max_tokens=14)
    for prompt, output in outputs.items():
        expected = hf_greedy(folder, output.prompt_token_ids, 14)
        assert output.token_ids == expected, (name, prompt)
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks


def test_batch_generate_matches_one_by_one(tiny_checkpoints: dict[str, Path]) -> None:
    folder = tiny_checkpoints["qwen2"]
    engine = Engine(folder, EngineConfig(block_size=8, num_blocks=64))
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    together = [out.token_ids for out in engine.generate(PROMPTS, params)]
    alone = [engine.generate(prompt, params)[0].token_ids for prompt in PROMPTS]
    assert together == alone


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2_dir: Path, hf_greedy: HfGreedy) -> None:
    engine = Engine(smollm2_dir, EngineConfig(num_blocks=64, max_num_seqs=4))
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    outputs = _run_staggered(engine, ["def fibonacci(n):", "Once upon a time", "Hi"], max_tokens=12)
    outputs["chat"] = engine.generate(chat, SamplingParams(max_tokens=12))[0]
    for key, output in outputs.items():
        assert output.token_ids == hf_greedy(smollm2_dir, output.prompt_token_ids, 12), key
    assert outputs["chat"].text == "The capital of France is Paris."
