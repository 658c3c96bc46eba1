"""Mixed steps: prompt chunks and decode tokens in one step, chunked prefill, one plan per step.

The batched step attention is held against the per-sequence einsum reference; the engine
is held against itself run one request at a time and against transformers ``generate``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tests.numerics import assert_within, attention_bound, gamma
from tests.serve.serve_lora_factory import make_peft_adapter
from tests.serve.test_serve_attention_ops import naive_attention, paged_case

from openledger.exceptions import InvalidRequestError
from openledger.models import save_tiny_model
from openledger.serve import Engine, EngineConfig, RequestOutput, SamplingParams
from openledger.serve.ops.step_attention import (
    DecodeGroup,
    PrefillGroup,
    plan_attention,
    step_attention,
)

HfGreedy = Callable[[Path, list[int], int], list[int]]
LONG_PROMPT = list(range(5, 66))  # 61 tokens
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)


def _mixed_case(
    shapes: list[tuple[int, int]], block_size: int, heads: int, kv_heads: int, window: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, object]]:
    """A step whose sequence ``i`` has ``shapes[i] = (new tokens, context)``: its query, the
    expected output from the einsum reference, how far float32 rounding may move it (both
    sides float32), and the plan's arguments."""
    dim = 8
    k_cache, v_cache, tables, ks, vs = paged_case(
        [c for _, c in shapes], block_size, heads, kv_heads, dim
    )
    gen = torch.Generator().manual_seed(len(shapes) * 31 + block_size)
    queries = [torch.randn(n, heads, dim, generator=gen) for n, _ in shapes]
    want = [naive_attention(q, k, v, window) for q, k, v in zip(queries, ks, vs, strict=True)]
    sizes = [
        attention_bound(q, naive_attention(q, k, v.abs(), window), float(k.abs().max()), dim**-0.5)
        for q, k, v in zip(queries, ks, vs, strict=True)
    ]
    terms = dim + 2 * max(c for _, c in shapes) + 2
    limit = 2 * gamma(terms, torch.float32) * torch.cat(sizes)
    host_tables = [row.tolist() for row in tables]
    args = {
        "query_lens": [n for n, _ in shapes],
        "context_lens": [c for _, c in shapes],
        "block_tables": host_tables,
        "block_size": block_size,
        "sliding_window": window,
        "device": torch.device("cpu"),
        "caches": (k_cache, v_cache),
    }
    return torch.cat(queries), torch.cat(want), limit, args


MIXED_SHAPES = [
    [(1, 9), (5, 5), (1, 1), (3, 12), (1, 17)],  # decode rows between prompt rows
    [(7, 7), (7, 7), (6, 6)],  # a plain prefill step (one padded group)
    [(1, 4), (1, 30), (1, 2)],  # a plain decode step
    [(90, 90), (2, 2), (3, 9), (1, 5)],  # one long prompt, padded apart from short ones
]


@pytest.mark.parametrize("shapes", MIXED_SHAPES)
@pytest.mark.parametrize(("heads", "kv_heads", "window"), [(4, 4, None), (6, 2, None), (4, 1, 5)])
def test_step_attention_matches_the_einsum_reference(
    shapes: list[tuple[int, int]], heads: int, kv_heads: int, window: int | None
) -> None:
    query, want, limit, args = _mixed_case(shapes, 4, heads, kv_heads, window)
    k_cache, v_cache = args.pop("caches")  # type: ignore[misc]
    plan = plan_attention(**args)  # type: ignore[arg-type]
    got = step_attention(query, k_cache, v_cache, plan, scale=8**-0.5)
    assert_within(got, want, limit)


def test_plan_pads_similar_prompts_together_and_long_ones_apart() -> None:
    tables = [list(range(13)), [13], [14], [15, 16]]
    plan = plan_attention(
        [200, 2, 3, 1],
        [200, 2, 3, 5],
        tables,
        block_size=16,
        sliding_window=None,
        device=torch.device("cpu"),
    )
    assert plan.num_tokens == 206
    assert plan.decode is not None
    assert plan.decode.rows is not None
    assert plan.decode.rows.tolist() == [205]
    assert [group.shape for group in plan.prefill] == [(1, 200, 200), (2, 3, 3)]
    decode_only = plan_attention(
        [1, 1], [3, 9], [[0], [1]], block_size=8, sliding_window=None, device=torch.device("cpu")
    )
    assert decode_only.decode is not None
    assert decode_only.decode.rows is None
    assert not decode_only.prefill


@needs_triton
@pytest.mark.parametrize(("heads", "kv_heads", "window"), [(4, 2, None), (4, 4, 3)])
def test_step_attention_with_the_triton_decode_kernel(
    heads: int, kv_heads: int, window: int | None
) -> None:
    from openledger.serve.ops.attention_triton import paged_decode_attention

    query, want, limit, args = _mixed_case(MIXED_SHAPES[0], 4, heads, kv_heads, window)
    k_cache, v_cache = args.pop("caches")  # type: ignore[misc]
    plan = plan_attention(**args)  # type: ignore[arg-type]
    got = step_attention(
        query,
        k_cache,
        v_cache,
        plan,
        scale=8**-0.5,
        sliding_window=window,
        decode=paged_decode_attention,
    )
    assert_within(got, want, limit)


def _alone(engine: Engine, prompt: list[int] | str, params: SamplingParams) -> list[int]:
    return engine.generate(prompt, params)[0].token_ids


def test_a_mixed_step_gives_the_tokens_of_separate_steps(
    tiny_checkpoints: dict[str, Path],
) -> None:
    engine = Engine(tiny_checkpoints["llama"], EngineConfig(block_size=4, num_blocks=64))
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    first, second = "The capital of France is", "Numbers: 0 1 2 3 4 5"
    want = [_alone(engine, first, params), _alone(engine, second, params)]
    a = engine.add_request(first, params)
    for _ in range(3):
        engine.step()
    b = engine.add_request(second, params)
    mixed = engine.step()  # b's whole prompt and a's fourth token
    assert sorted(out.request_id for out in mixed) == sorted([a, b])
    assert [len(out.token_ids) for out in sorted(mixed, key=lambda o: o.request_id)] == [4, 1]
    finals: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        finals.update({out.request_id: out for out in engine.step() if out.finished})
    assert [finals[a].token_ids, finals[b].token_ids] == want


@pytest.mark.parametrize("name", ["llama", "mistral-window", "qwen2"])
def test_chunked_prefill_gives_the_tokens_of_one_prefill(
    name: str, tiny_checkpoints: dict[str, Path], hf_greedy: HfGreedy
) -> None:
    folder = tiny_checkpoints[name]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    whole = Engine(folder, EngineConfig(block_size=4, num_blocks=64))
    chunked = Engine(
        folder,
        EngineConfig(block_size=4, num_blocks=64, max_num_seqs=2, max_num_batched_tokens=7),
    )
    want = _alone(whole, LONG_PROMPT, params)
    assert want == hf_greedy(folder, LONG_PROMPT, 6)
    chunked.add_request(LONG_PROMPT, params)
    steps_to_first_token = 1
    while not chunked.step():
        steps_to_first_token += 1
    assert steps_to_first_token == -(-len(LONG_PROMPT) // 7)
    while chunked.has_unfinished_requests():
        chunked.step()
    assert _alone(chunked, LONG_PROMPT, params) == want


def test_chunks_share_steps_with_decodes_and_the_prefix_cache(
    tiny_checkpoints: dict[str, Path], hf_greedy: HfGreedy
) -> None:
    """A long prompt chunked beside a decoding request; a later request reuses its blocks."""
    folder = tiny_checkpoints["llama"]
    config = EngineConfig(block_size=4, num_blocks=96, max_num_seqs=3, max_num_batched_tokens=9)
    engine = Engine(folder, config)
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    short = [7, 8, 9]
    ids = [engine.add_request(short, params), engine.add_request(LONG_PROMPT, params)]
    first = engine.step()
    assert [out.request_id for out in first] == [ids[0]]  # the long prompt got a first chunk
    again = [*LONG_PROMPT[:40], 3, 3]
    finals: dict[str, RequestOutput] = {}
    steps = 0
    while engine.has_unfinished_requests():
        steps += 1
        if steps == 4:  # joins while the long prompt is still being chunked
            ids.append(engine.add_request(again, params))
        finals.update({out.request_id: out for out in engine.step() if out.finished})
    prompts = [short, LONG_PROMPT, again]
    for request_id, prompt in zip(ids, prompts, strict=True):
        assert finals[request_id].token_ids == hf_greedy(folder, prompt, 10)
    assert finals[ids[2]].metrics.num_cached_tokens > 0
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks


def test_without_chunked_prefill_a_prompt_must_fit_one_step(
    tiny_checkpoints: dict[str, Path],
) -> None:
    config = EngineConfig(
        block_size=4,
        num_blocks=64,
        max_num_seqs=4,
        max_num_batched_tokens=16,
        enable_chunked_prefill=False,
    )
    engine = Engine(tiny_checkpoints["llama"], config)
    assert engine.max_model_len == 16
    with pytest.raises(InvalidRequestError, match="context holds 16"):
        engine.generate(list(range(3, 30)))
    assert len(engine.generate(list(range(3, 13)), SamplingParams(max_tokens=3))[0].token_ids) == 3


def test_adapters_of_prompt_and_decode_tokens_share_a_step(tmp_path: Path) -> None:
    """Decode tokens of one adapter and prompt tokens of another (and of none) in one step."""
    base = save_tiny_model(tmp_path / "base", "llama", seed=11)
    make_peft_adapter(base, tmp_path / "a", r=4, targets=["q_proj", "v_proj", "down_proj"], seed=1)
    make_peft_adapter(base, tmp_path / "b", r=8, targets=["o_proj", "gate_proj"], seed=2)
    engine = Engine(
        base, EngineConfig(block_size=4, num_blocks=64, max_num_seqs=4, max_num_batched_tokens=8)
    )
    engine.add_adapter("a", tmp_path / "a")
    engine.add_adapter("b", tmp_path / "b")
    requests = [
        ([5, 6, 7, 8], SamplingParams(max_tokens=6, ignore_eos=True, adapter="a")),
        (list(range(10, 30)), SamplingParams(max_tokens=6, ignore_eos=True, adapter="b")),
        (list(range(40, 45)), SamplingParams(max_tokens=6, ignore_eos=True)),
    ]
    want = [_alone(engine, prompt, params) for prompt, params in requests]
    assert want[1] != _alone(engine, requests[1][0], SamplingParams(max_tokens=6, ignore_eos=True))
    ids = [engine.add_request(*requests[0])]
    engine.step()
    ids += [engine.add_request(*request) for request in requests[1:]]
    finals: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        finals.update({out.request_id: out for out in engine.step() if out.finished})
    assert [finals[request_id].token_ids for request_id in ids] == want


@pytest.mark.parametrize("shapes", MIXED_SHAPES)
def test_the_shared_additive_mask_is_bit_for_bit_the_bool_mask(
    shapes: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    query, _, _, args = _mixed_case(shapes, 4, 6, 2, None)
    k_cache, v_cache = args.pop("caches")  # type: ignore[misc]
    plan = plan_attention(**args)  # type: ignore[arg-type]
    got = step_attention(query, k_cache, v_cache, plan, scale=8**-0.5)
    groups = [plan.decode, *plan.prefill] if plan.decode else plan.prefill
    for group in groups:
        bias = group.additive_mask(torch.float32)
        assert group.additive_mask(torch.float32) is bias  # built once, shared by layers
        assert torch.equal(bias == 0, group.mask)
        assert torch.isneginf(bias[~group.mask]).all()
        assert group.additive_mask(torch.float64).dtype == torch.float64
    for kind in (DecodeGroup, PrefillGroup):  # SDPA given the bool masks instead
        monkeypatch.setattr(kind, "additive_mask", lambda self, dtype: self.mask)
    plain = step_attention(query, k_cache, v_cache, plan, scale=8**-0.5)
    assert torch.equal(got, plain)
