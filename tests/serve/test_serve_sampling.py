"""Sampling against simple references: temperature, top-k, top-p, penalty, seeds, logprobs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tests.numerics import forward_terms, gamma

from openledger.serve import Engine, EngineConfig, SamplingParams
from openledger.serve.sampling import apply_repetition_penalty, next_token_probs, sample

LOGITS = [2.0, -1.0, 0.5, 3.0, 0.0, -2.5, 1.0, 0.25]


def reference_probs(
    logits: list[float], temperature: float, top_k: int, top_p: float
) -> list[float]:
    """Plain-Python: scale, keep the top k, softmax, keep the smallest head reaching top_p."""
    scaled = [x / temperature for x in logits]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    keep = set(order[:top_k] if top_k else order)
    weights = [math.exp(scaled[i]) if i in keep else 0.0 for i in range(len(scaled))]
    total = sum(weights)
    probs = [w / total for w in weights]
    head, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= top_p:
            break
        head.add(i)
        mass += probs[i]
    kept = sum(probs[i] for i in head)
    return [probs[i] / kept if i in head else 0.0 for i in range(len(probs))]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("top_k", [0, 1, 3])
@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5, 0.05])
def test_probs_match_the_reference(temperature: float, top_k: int, top_p: float) -> None:
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    got = next_token_probs(torch.tensor(LOGITS), params).tolist()
    # probabilities <= 1 from a float32 softmax: the exponentials, their sum, the division
    # by the temperature and the renormalisation after the cut
    bound = 2 * gamma(len(LOGITS) + 4, torch.float32)
    assert got == pytest.approx(reference_probs(LOGITS, temperature, top_k, top_p), abs=bound)


def test_repetition_penalty_matches_transformers() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor(LOGITS)
    seen = [0, 1, 3, 3]
    ours = apply_repetition_penalty(logits, seen, 1.3)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([seen]), logits[None].clone())[0]
    assert torch.equal(ours, theirs)


def test_draws_follow_the_distribution() -> None:
    params = SamplingParams(temperature=1.0, top_k=4)
    expected = reference_probs(LOGITS, 1.0, 4, 1.0)
    generator = torch.Generator().manual_seed(0)
    counts = [0] * len(LOGITS)
    for _ in range(4000):
        counts[sample(torch.tensor([LOGITS]), [params], [[]], [0], generator).token_ids[0]] += 1
    assert [c / 4000 for c in counts] == pytest.approx(expected, abs=0.03)
    assert all(counts[i] == 0 for i, p in enumerate(expected) if p == 0.0)


def test_logprobs_are_the_raw_log_softmax() -> None:
    params = SamplingParams(logprobs=2)
    result = sample(torch.tensor([LOGITS]), [params], [[]], [0])
    log_z = math.log(sum(math.exp(x) for x in LOGITS))
    assert result.token_ids == [3]
    entry = result.logprobs[0]
    assert entry is not None
    assert set(entry) == {3, 0}
    assert entry[3] == pytest.approx(3.0 - log_z)
    assert entry[0] == pytest.approx(2.0 - log_z)


def test_greedy_bans_pick_the_next_best_and_leave_the_logits_as_they_were() -> None:
    logits = torch.tensor([LOGITS, LOGITS, LOGITS[::-1]])
    before = logits.clone()
    params = [SamplingParams(logprobs=1), SamplingParams(), SamplingParams()]
    banned = [frozenset({3}), frozenset(), frozenset({0, 1})]
    result = sample(logits, params, [[], [], []], [0, 0, 0], banned=banned)
    best = max(range(len(LOGITS)), key=LOGITS.__getitem__)
    second = sorted(range(len(LOGITS)), key=LOGITS.__getitem__)[-2]
    assert result.token_ids[0] == second  # the best one is banned
    assert result.token_ids[1] == best
    assert torch.equal(logits, before)  # bans were masked in place and restored
    entry = result.logprobs[0]
    assert entry is not None
    assert second in entry


@pytest.fixture(scope="module")
def engine(tiny_checkpoints: dict[str, Path]) -> Engine:
    return Engine(tiny_checkpoints["llama"], EngineConfig(block_size=4, num_blocks=128))


def test_seeded_requests_reproduce_whatever_the_batch(engine: Engine) -> None:
    seeded = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True)
    alone = engine.generate("The capital", seeded)[0].token_ids
    noise = SamplingParams(max_tokens=12, temperature=1.0, ignore_eos=True)
    batch = engine.generate(["Numbers:", "The capital", "def add"], [noise, seeded, noise])
    other_seed = SamplingParams(
        max_tokens=12, temperature=0.9, top_p=0.95, seed=99, ignore_eos=True
    )
    assert batch[1].token_ids == alone
    assert engine.generate("The capital", other_seed)[0].token_ids != alone


def test_engine_logprobs_match_the_transformers_forward(
    engine: Engine, tiny_checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoModelForCausalLM

    out = engine.generate("The capital", SamplingParams(max_tokens=5, logprobs=3, ignore_eos=True))[
        0
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"], dtype=torch.float32)
    ids = torch.tensor([out.prompt_token_ids + out.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    ref = torch.log_softmax(logits, dim=-1)
    # two float32 forward passes (ours, transformers'): each logit within the row-wise bound
    # of the pass and the head; log_softmax moves by at most twice the largest change
    terms = forward_terms(model.config, ids.shape[1]) + model.config.hidden_size
    bounds = 2 * 2 * gamma(terms, torch.float32) * logits.double().norm(dim=-1)
    assert out.logprobs is not None
    assert len(out.logprobs) == 5
    for step, (token, entry) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        row_index = len(out.prompt_token_ids) - 1 + step
        row = ref[row_index]
        top = torch.topk(row, 3).indices.tolist()
        assert set(entry) == {token, *top}
        for key, value in entry.items():
            assert value == pytest.approx(float(row[key]), abs=float(bounds[row_index]))
