"""Engine behaviour: stops, cancellation, bad input, prefix caching, preemption, streaming."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.numerics import abs_products, assert_within_rounding

from openledger.exceptions import InvalidRequestError
from openledger.serve import Engine, EngineConfig, SamplingParams
from openledger.serve.sequence import SequenceState

LONG = SamplingParams(max_tokens=24, ignore_eos=True)
SHARED = "Datanets collect records from many contributors; each record is hashed and signed."


@pytest.fixture(scope="module")
def folder(tiny_checkpoints: dict[str, Path]) -> Path:
    return tiny_checkpoints["llama"]


@pytest.fixture
def engine(folder: Path) -> Engine:
    return Engine(
        folder,
        EngineConfig(block_size=4, num_blocks=128, max_model_len=96, max_num_batched_tokens=256),
    )


def test_max_tokens_gives_length_and_metrics(engine: Engine) -> None:
    out = engine.generate("The capital", SamplingParams(max_tokens=7, ignore_eos=True))[0]
    assert (out.finish_reason, len(out.token_ids)) == ("length", 7)
    assert out.metrics.num_prompt_tokens == len(out.prompt_token_ids)
    assert out.metrics.num_generated_tokens == 7
    assert out.metrics.time_to_first_token is not None
    assert out.metrics.time_to_first_token >= 0
    assert len(out.metrics.inter_token_latencies) == 6
    assert out.text == engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_context_limit_ends_with_length(engine: Engine) -> None:
    prompt = list(range(3, 93))
    out = engine.generate(prompt, SamplingParams(max_tokens=50, ignore_eos=True))[0]
    assert len(prompt) + len(out.token_ids) == engine.max_model_len
    assert out.finish_reason == "length"


def test_eos_and_stop_tokens_end_generation() -> None:
    seq = SequenceState(0, [5], 1, SamplingParams(max_tokens=9), 10, eos_token_ids=frozenset({2}))
    assert seq.append_token(7) is None
    assert seq.append_token(2) == "stop"
    ignoring = SequenceState(
        1, [5], 1, SamplingParams(max_tokens=9, ignore_eos=True), 10, frozenset({2})
    )
    assert ignoring.append_token(2) is None
    stop_tok = SequenceState(2, [5], 1, SamplingParams(stop_token_ids=[4]), 10)
    assert stop_tok.append_token(4) == "stop"


def test_stop_token_ids_in_the_engine(engine: Engine) -> None:
    base = engine.generate("The capital", LONG)[0].token_ids
    stop_at = base[5]
    out = engine.generate(
        "The capital", SamplingParams(max_tokens=24, ignore_eos=True, stop_token_ids=[stop_at])
    )[0]
    assert out.token_ids == base[: base.index(stop_at) + 1]
    assert out.finish_reason == "stop"


def test_min_tokens_holds_back_stop_tokens(engine: Engine) -> None:
    stop_at = engine.generate("The capital", LONG)[0].token_ids[0]
    params = SamplingParams(max_tokens=24, min_tokens=4, stop_token_ids=[stop_at])
    out = engine.generate("The capital", params)[0]
    assert stop_at not in out.token_ids[:4]
    assert len(out.token_ids) > 4
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(max_tokens=2, min_tokens=3)


def test_stop_string_truncates_and_streams_consistently(engine: Engine) -> None:
    full = engine.generate("A LoRA adapter", LONG)[0].text
    stop = full[6:9]
    cut = full[: full.find(stop)]
    params = SamplingParams(max_tokens=24, ignore_eos=True, stop=[stop, "never-there"])
    out = engine.generate("A LoRA adapter", params)[0]
    assert (out.text, out.finish_reason) == (cut, "stop")
    pieces = list(engine.stream("A LoRA adapter", params))
    assert "".join(pieces) == cut
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks


def test_stream_yields_the_generated_text(engine: Engine) -> None:
    full = engine.generate("Ünïcödé", LONG)[0].text
    pieces = list(engine.stream("Ünïcödé", LONG))
    assert "".join(pieces) == full
    assert len(pieces) > 1


def test_chat_messages_use_the_chat_template(engine: Engine) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    out = engine.generate(messages, SamplingParams(max_tokens=3))[0]
    assert out.prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert out.prompt_token_ids == engine.tokenizer(out.prompt, add_special_tokens=False).input_ids


def test_abort_mid_generation_leaves_the_others_intact(engine: Engine) -> None:
    alone = engine.generate("The capital", LONG)[0].token_ids
    keep = engine.add_request("The capital", LONG)
    drop = engine.add_request("Numbers: 0 1", LONG)
    for _ in range(4):
        engine.step()
    assert engine.abort_request(drop)
    assert not engine.abort_request(drop)
    outputs = {o.request_id: o for o in engine.step()}
    assert outputs[drop].finish_reason == "abort"
    finals = {}
    while engine.has_unfinished_requests():
        finals.update({o.request_id: o for o in engine.step() if o.finished})
    assert finals[keep].token_ids == alone
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks


def test_closing_a_stream_cancels_its_request(engine: Engine) -> None:
    stream = engine.stream("The capital", LONG)
    next(stream)
    stream.close()
    assert not engine.has_unfinished_requests() or engine.step()[0].finish_reason == "abort"
    assert not engine.has_unfinished_requests()


def test_bad_requests_are_refused_and_the_engine_keeps_serving(engine: Engine) -> None:
    alone = engine.generate("The capital", LONG)[0].token_ids
    keep = engine.add_request("The capital", LONG)
    engine.step()
    with pytest.raises(InvalidRequestError, match="context holds 96"):
        engine.add_request(list(range(3, 200)))
    with pytest.raises(InvalidRequestError, match="token ids must be in"):
        engine.add_request([1, 10_000])
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request("")
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("x", request_id=keep)
    with pytest.raises(InvalidRequestError):
        engine.generate(["fine", list(range(3, 200))])
    finals = {}
    while engine.has_unfinished_requests():
        finals.update({o.request_id: o for o in engine.step() if o.finished})
    assert list(finals) == [keep]
    assert finals[keep].token_ids == alone


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -3),
        ("temperature", -1.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("repetition_penalty", 0.0),
        ("seed", -1),
        ("logprobs", -2),
        ("stop", [""]),
    ],
)
def test_invalid_sampling_params_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=field if field != "stop" else "stop strings"):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_request_too_big_for_the_cache_is_refused(folder: Path) -> None:
    small = Engine(folder, EngineConfig(block_size=4, num_blocks=4))
    with pytest.raises(InvalidRequestError, match="KV blocks"):
        small.add_request("The capital of France", SamplingParams(max_tokens=30))


def test_prefix_caching_reuses_blocks_and_keeps_outputs(folder: Path) -> None:
    config = dict(block_size=4, num_blocks=128)
    cached = Engine(folder, EngineConfig(**config))
    plain = Engine(folder, EngineConfig(**config, enable_prefix_caching=False))
    prompts = [SHARED + " One", SHARED + " Two", SHARED + " One"]
    first = cached.generate(prompts[0], LONG)[0]
    rest = cached.generate(prompts[1:], LONG)
    assert first.metrics.num_cached_tokens == 0
    assert all(out.metrics.num_cached_tokens >= 16 for out in rest)
    expected = [out.token_ids for out in plain.generate(prompts, LONG)]
    assert [first.token_ids, *(o.token_ids for o in rest)] == expected


def test_small_pool_preempts_and_finishes_with_the_same_tokens(folder: Path) -> None:
    prompts = [f"Numbers: {i} {i + 1} {i + 2}" for i in range(6)]
    roomy = Engine(folder, EngineConfig(block_size=2, num_blocks=256))
    tight = Engine(folder, EngineConfig(block_size=2, num_blocks=24, enable_prefix_caching=False))
    expected = [o.token_ids for o in roomy.generate(prompts, LONG)]
    outputs = tight.generate(prompts, LONG)
    assert [o.token_ids for o in outputs] == expected
    assert sum(o.metrics.num_preemptions for o in outputs) > 0
    assert tight.block_pool.num_free_blocks == 24


def test_engine_config_errors_name_the_setting(folder: Path) -> None:
    from openledger.exceptions import ConfigError, OpenLedgerError

    with pytest.raises(
        ConfigError, match="engine config field 'block_size': block_size must be a power"
    ):
        EngineConfig(block_size=12)
    with pytest.raises(OpenLedgerError, match="engine config field 'max_num_seqs'"):
        EngineConfig(max_num_seqs=0)
    with pytest.raises(ConfigError, match="'max_num_seqz': is not among the engine config fields"):
        EngineConfig(max_num_seqz=4)
    with pytest.raises(ConfigError, match="'block_size'"):
        EngineConfig.checked({"block_size": "sixteen"})
    with pytest.raises(ConfigError, match="max_model_len=4096"):
        Engine(folder, EngineConfig(max_model_len=4096))
    with pytest.raises(ConfigError, match="kv_cache_memory"):
        Engine(folder, EngineConfig(kv_cache_memory=10))


def test_packed_lm_head_matches_the_plain_matmul_and_follows_weight_changes(
    engine: Engine,
) -> None:
    import torch
    import torch.nn.functional as F

    model = engine.runner.model
    weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head
    hidden = torch.randn(5, weight.shape[1], generator=torch.Generator().manual_seed(3))
    terms = weight.shape[1]  # one sum over the hidden size per logit
    with torch.inference_mode():
        got, want, size = (
            model.compute_logits(hidden),
            F.linear(hidden, weight),
            abs_products(hidden, weight),
        )
        assert_within_rounding(got, want, bound=size, dtype=torch.float32, terms=terms)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(0.5)
        with torch.inference_mode():
            got, want = model.compute_logits(hidden), F.linear(hidden, weight)
            size = abs_products(hidden, weight)
            assert_within_rounding(got, want, bound=size, dtype=torch.float32, terms=terms)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
