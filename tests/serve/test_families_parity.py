"""Qwen3, Gemma 2, Gemma 3 (text) and Phi-3 served against transformers (fp32, CPU).

Tiny random checkpoints of each family in several shapes (grouped-query ratios, head
widths 64/128/256, sliding windows shorter than the prompts, soft-capping on, LongRoPE
crossing into its long factors): greedy tokens equal ``generate``'s with requests joining
mid-generation, with chunked prefill and prefix caching, and every generated token's
log-probabilities are within float32 rounding of transformers'. Each family's
distinguishing feature is checked to change the outputs, so that serving it as plain
Llama could not pass.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.numerics import assert_rows_close, forward_terms
from tests.serve.serve_lora_factory import peft_generate
from tests.serve.test_serve_parity import PROMPTS, _run_staggered

from openledger.exceptions import UnsupportedModelError
from openledger.models import tiny_config, tiny_tokenizer
from openledger.serve import Engine, EngineConfig, SamplingParams
from openledger.serve.models.config import SUPPORTED_MODEL_TYPES, ModelConfig

HfGreedy = Callable[[Path, list[int], int], list[int]]


def _longrope(half: int) -> dict[str, Any]:
    return {
        "type": "longrope",
        "short_factor": [1.0 + i / (2 * half) for i in range(half)],
        "long_factor": [1.5 + i / half for i in range(half)],
    }


CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # Qwen3: q/k norms; head_dim set apart from hidden / heads
    "qwen3-gqa2-d64": ("qwen3", {"head_dim": 64}),
    "qwen3-gqa4-d128-untied": ("qwen3", {"head_dim": 128, "num_key_value_heads": 1,
                                         "tie_word_embeddings": False}),
    # Gemma 2: window 8 and 4 (prompts are longer), attention and final soft-capping on
    "gemma2-window8-capped": ("gemma2", {}),
    "gemma2-mqa-d256-window4": ("gemma2", {"num_attention_heads": 2, "num_key_value_heads": 1,
                                           "head_dim": 256, "query_pre_attn_scalar": 256,
                                           "sliding_window": 4, "num_hidden_layers": 3}),
    # Gemma 3: two local layers then a global one; local RoPE base apart from the global
    "gemma3-pattern3-window8": ("gemma3_text", {}),
    "gemma3-gqa4-d128-window5": ("gemma3_text", {"num_key_value_heads": 1, "head_dim": 128,
                                                 "sliding_window": 5, "num_hidden_layers": 4,
                                                 "sliding_window_pattern": 2}),
    # Phi-3: fused checkpoint projections; LongRoPE's long factors past 32 positions (its
    # prompts are longer: LONG_PROMPTS), its short ones within 64; Phi-3-mini's window
    "phi3-longrope": ("phi3", {}),
    "phi3-mha-d64-window6": ("phi3", {"hidden_size": 128, "num_attention_heads": 2,
                                      "num_key_value_heads": 2, "sliding_window": 6,
                                      "original_max_position_embeddings": 64,
                                      "rope_scaling": _longrope(32)}),
}  # fmt: skip
LONG_PROMPTS = [" ".join([p] * 6) for p in PROMPTS]


def _prompts(name: str) -> list[str]:
    return LONG_PROMPTS if name == "phi3-longrope" else PROMPTS


_CACHE: dict[str, Path] = {}


def _save(root: Path, name: str) -> Path:
    """A tiny random checkpoint; its norm weights random too (they start at 1, or 0 for
    Gemma's ``1 + w`` norms, which would hide a norm computed the wrong way)."""
    from transformers import AutoModelForCausalLM

    family, overrides = CASES[name]
    config = tiny_config(family, **overrides)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sorted(CASES).index(name) + 11)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                param.data.normal_(0.0 if family.startswith("gemma") else 1.0, 0.3)
    folder = root / name
    model.save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer(config.vocab_size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The folder of one entry of CASES, written on first use."""
    root = tmp_path_factory.mktemp("families")

    def get(name: str) -> Path:
        if name not in _CACHE or not _CACHE[name].is_dir():
            _CACHE[name] = _save(root, name)
        return _CACHE[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_tokens_match_transformers_with_joins(
    name: str, checkpoint: Callable[[str], Path], hf_greedy: HfGreedy
) -> None:
    folder = checkpoint(name)
    engine = Engine(folder, EngineConfig(block_size=4, num_blocks=256, max_num_seqs=3))
    outputs = _run_staggered(engine, _prompts(name), max_tokens=14)
    for prompt, output in outputs.items():
        assert output.token_ids == hf_greedy(folder, output.prompt_token_ids, 14), (name, prompt)
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks


def _chunked_and_cached(num_blocks: int) -> EngineConfig:
    """Prompts cut into 5-token chunks, prefix caching on, up to 4 sequences."""
    return EngineConfig(
        block_size=4,
        num_blocks=num_blocks,
        max_num_seqs=4,
        max_num_batched_tokens=5,
        enable_chunked_prefill=True,
        enable_prefix_caching=True,
    )


@pytest.mark.parametrize(
    "name", ["gemma2-window8-capped", "gemma3-gqa4-d128-window5", "phi3-mha-d64-window6"]
)
def test_windows_with_chunked_prefill_and_prefix_caching(
    name: str, checkpoint: Callable[[str], Path], hf_greedy: HfGreedy
) -> None:
    """Prompts cut into 5-token chunks, sharing cached prefix blocks, a decode row beside
    them: each local layer sees only its window, whichever way the steps fall.
    (Phi-3's prompts stay within its 64 pretraining positions here; prompts past them:
    the LongRoPE tests below.)"""
    folder = checkpoint(name)
    engine = Engine(folder, _chunked_and_cached(num_blocks=128))
    shared = "The capital of France is Paris. The capital of"
    prompts = [shared + " Italy is", shared + " Spain is", "def add(a, b):", shared + " Italy is"]
    params = SamplingParams(max_tokens=10)
    outputs = _run_staggered(engine, prompts[:3], max_tokens=10)
    outputs["again"] = engine.generate(prompts[3], params)[0]  # its prefix blocks are cached
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks
    for key, output in outputs.items():
        assert output.token_ids == hf_greedy(folder, output.prompt_token_ids, 10), (name, key)


def test_longrope_sequences_growing_past_the_pretraining_context_are_recomputed(
    checkpoint: Callable[[str], Path], hf_greedy: HfGreedy
) -> None:
    """Sequences that start within Phi-3's 32 pretraining positions and generate past
    them, joining one another mid-generation: transformers recomputes such a sequence's
    whole cache with the long factors when it crosses, and so does the engine (the
    sequence is preempted once and prefilled again), so the tokens stay equal."""
    folder = checkpoint("phi3-longrope")
    engine = Engine(folder, EngineConfig(block_size=4, num_blocks=256, max_num_seqs=3))
    prompts = [p[:20] for p in PROMPTS]
    assert all(len(engine.tokenizer(p).input_ids) <= 32 for p in prompts)
    new = 40
    outputs = _run_staggered(engine, prompts, max_tokens=new)
    for prompt, output in outputs.items():
        assert len(output.token_ids) == new
        assert output.token_ids == hf_greedy(folder, output.prompt_token_ids, new), prompt
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks


def test_longrope_prompts_in_chunks_and_cached_prefixes_keep_one_regime(
    checkpoint: Callable[[str], Path], hf_greedy: HfGreedy
) -> None:
    """A prompt longer than the pretraining context, computed in 5-token chunks, is rotated
    with the long factors from its first chunk; a short prompt's cached blocks (short
    factors) never serve a long prompt that starts the same way. (Every KV read in either
    regime: tests/serve/test_serve_scheduler_stateful.py.)"""
    folder = checkpoint("phi3-longrope")
    engine = Engine(folder, _chunked_and_cached(num_blocks=256))
    short = PROMPTS[0]
    long = " ".join([short] * 6)
    params = SamplingParams(max_tokens=6)
    cached = []
    for prompt in (short, long, short, long):
        output = engine.generate(prompt, params)[0]
        assert output.token_ids == hf_greedy(folder, output.prompt_token_ids, 6), prompt
        cached.append(output.metrics.num_cached_tokens)
    assert len(engine.tokenizer(long).input_ids) > 32 >= len(engine.tokenizer(short).input_ids)
    # the long prompt finds none of the short one's blocks, then its own; the short, its own
    assert cached[0] == cached[1] == 0
    assert cached[2] > 0
    assert cached[3] > cached[2]
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks


def _compare_logprobs(name: str, folder: Path, mutate: Callable[[Any], None] | None = None) -> None:
    """The engine's log-probabilities of 12 greedy tokens against transformers' (the
    engine's model changed by ``mutate`` first, when given)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    vocab, new = config.vocab_size, 12
    engine = Engine(folder, EngineConfig(block_size=4, num_blocks=128))
    if mutate is not None:
        mutate(engine.runner.model)
    prompt = engine.tokenizer(_prompts(name)[1]).input_ids
    params = SamplingParams(max_tokens=new, min_tokens=new, logprobs=vocab)
    output = engine.generate(prompt, params)[0]
    _, want = peft_generate(folder, None, prompt, new)
    assert output.logprobs is not None
    got = torch.tensor(
        [[row[t] for t in range(vocab)] for row in output.logprobs], dtype=torch.float64
    )
    # the forward pass's sums, the q/k norms over a head, the head, then the log-softmax
    terms = forward_terms(config, len(prompt) + new) + config.num_hidden_layers * 256
    terms += config.hidden_size + vocab
    assert_rows_close(got, want, dtype=torch.float32, terms=terms, msg=f"{name}: ")


@pytest.mark.parametrize("name", list(CASES))
def test_logprobs_within_float32_rounding_of_transformers(
    name: str, checkpoint: Callable[[str], Path]
) -> None:
    _compare_logprobs(name, checkpoint(name))


def _attention(model: Any) -> list[Any]:
    return [layer.self_attn for layer in model.layers]


def _no_attn_softcap(model: Any) -> None:
    for attn in model.attention_layers():
        attn.softcap = None


def _no_windows(model: Any) -> None:
    for attn in model.attention_layers():
        attn.sliding_window = None


def _no_qk_norm(model: Any) -> None:
    for attn in _attention(model):
        attn.q_norm = attn.k_norm = None


def _global_rope_everywhere(model: Any) -> None:
    for attn in _attention(model):
        attn.rotary = _attention(model)[-1].rotary


def _short_rope_only(model: Any) -> None:
    for attn in _attention(model):
        attn.rotary.table_positions = lambda batch: batch.positions


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("qwen3-gqa2-d64", _no_qk_norm),
        ("gemma2-window8-capped", _no_attn_softcap),
        ("gemma2-window8-capped", _no_windows),
        ("gemma3-pattern3-window8", _no_qk_norm),
        ("gemma3-pattern3-window8", _global_rope_everywhere),
        ("phi3-longrope", _short_rope_only),
    ],
)
def test_each_family_feature_changes_the_outputs(
    name: str, mutate: Callable[[Any], None], checkpoint: Callable[[str], Path]
) -> None:
    """The comparison above fails when a family's feature is taken out of the engine's
    model: it checks them, not only what the families share."""
    with pytest.raises(AssertionError, match="exceed gamma"):
        _compare_logprobs(name, checkpoint(name), mutate)


def _config(name: str, **changes: Any) -> ModelConfig:
    family, overrides = CASES[name]
    raw = tiny_config(family, **{**overrides, **changes}).to_dict()  # type: ignore[arg-type]
    return ModelConfig.from_dict(raw)


def test_each_family_reads_its_config() -> None:
    qwen3 = _config("qwen3-gqa4-d128-untied")
    assert (qwen3.qk_norm, qwen3.head_dim, qwen3.num_kv_heads) == (True, 128, 1)
    assert not qwen3.qkv_bias
    assert not qwen3.tie_word_embeddings
    assert _config("qwen3-gqa2-d64").tie_word_embeddings
    gemma2 = _config("gemma2-window8-capped")
    assert gemma2.layer_windows == (8, None)
    assert gemma2.sliding_window is None
    assert (gemma2.attn_softcap, gemma2.final_softcap) == (2.0, 3.0)
    assert gemma2.norm_offset
    assert gemma2.sandwich_norms
    assert gemma2.hidden_act == "gelu_pytorch_tanh"
    assert gemma2.embed_scale == 64**0.5
    assert gemma2.attn_scale == 16**-0.5
    gemma3 = _config("gemma3-pattern3-window8")
    assert gemma3.layer_windows == (8, 8, None)
    assert gemma3.attn_softcap is None
    assert gemma3.local_rope is not None
    assert gemma3.local_rope.theta == 10000.0
    assert gemma3.rope.theta == 1000000.0
    assert gemma3.rope_of(0) is gemma3.local_rope
    assert gemma3.rope_of(2) is gemma3.rope
    assert gemma3.attn_scale == 24**-0.5
    phi3 = _config("phi3-longrope")
    assert phi3.fused_checkpoint
    assert phi3.rope.rope_type == "longrope"
    # transformers' attention factor: sqrt(1 + ln(512 / 32) / ln(32))
    assert phi3.rope.attention_factor == pytest.approx(
        (1 + 4 * 0.6931471805599453 / 3.4657359) ** 0.5
    )
    windowed = _config("phi3-mha-d64-window6")
    assert windowed.sliding_window == 6
    assert windowed.rope.attention_factor == pytest.approx(
        (1 + 3 * 0.6931471805599453 / (6 * 0.6931471805599453)) ** 0.5
    )


def test_older_config_files_give_the_same_layout() -> None:
    """Files written before ``layer_types`` / ``rope_parameters``: Gemma 2's every other
    layer, Gemma 3's ``sliding_window_pattern`` and ``rope_local_base_freq``."""
    raw = tiny_config("gemma3_text").to_dict()
    for key in ("layer_types", "rope_parameters", "_sliding_window_pattern"):
        raw.pop(key, None)
    raw.update(sliding_window_pattern=3, rope_theta=1e6, rope_local_base_freq=5e3)
    old = ModelConfig.from_dict(raw)
    assert old.layer_windows == (8, 8, None)
    assert old.local_rope is not None
    assert old.local_rope.theta == 5e3
    assert old.rope.theta == 1e6
    raw2 = tiny_config("gemma2", num_hidden_layers=3).to_dict()
    raw2.pop("layer_types")
    assert ModelConfig.from_dict(raw2).layer_windows == (8, None, 8)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model_type": "gpt_neox"}, "gpt_neox.*supported: llama, mistral, qwen2, qwen3"),
        ({"model_type": "gemma3"}, "gemma3_text"),
        ({"hidden_act": "relu"}, "relu"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "yarn"),
        ({"layer_types": ["full_attention", "chunked_attention"]}, "chunked_attention"),
        ({"model_type": "gemma3_text", "use_bidirectional_attention": True}, "bidirectional"),
    ],
)
def test_unsupported_models_are_refused_by_name(changes: dict[str, Any], match: str) -> None:
    raw = tiny_config("qwen3").to_dict()
    raw.update(changes)
    with pytest.raises(UnsupportedModelError, match=match):
        ModelConfig.from_dict(raw)
    assert set(SUPPORTED_MODEL_TYPES) >= {"qwen3", "gemma2", "gemma3_text", "phi3"}


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize("name", ["gemma3-gqa4-d128-window5", "gemma2-window8-capped"])
def test_triton_backend_gives_transformers_tokens(
    name: str, checkpoint: Callable[[str], Path], hf_greedy: HfGreedy
) -> None:
    """Gemma 3's decode rows take the Triton kernel with each layer's window and its
    ``query_pre_attn_scalar`` scale; Gemma 2's soft-capped layers the torch path."""
    folder = checkpoint(name)
    config = EngineConfig(block_size=4, num_blocks=64, attention_backend="triton")
    engine = Engine(folder, config)
    assert engine.runner.model.attention_layers()[0].backend == "triton"
    outputs = engine.generate(PROMPTS[:2], SamplingParams(max_tokens=6))
    for output in outputs:
        assert output.token_ids == hf_greedy(folder, output.prompt_token_ids, 6), name
