"""Acceptance: one mixed batch of plain LoRA, DoRA, rsLoRA and ``modules_to_save`` adapters
gives, per request, the greedy tokens and the log-probabilities of transformers + PEFT.

The adapters differ in rank, targets, ``alpha_pattern``/``rank_pattern`` and in which of
``lm_head``/``embed_tokens`` they save; all of them, and a request without adapter, run in
the same steps. Bases: a SmolLM2-shaped tiny Llama (tied embeddings, 3:1 grouped-query
attention, head dim 64), and the tiny Qwen3, Gemma 2, Gemma 3 and Phi-3 configs (Phi-3's adapters
target its fused ``qkv_proj`` and ``gate_up_proj``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.numerics import assert_rows_close, forward_terms  # noqa: E402
from tests.serve.serve_lora_factory import make_peft_adapter, peft_generate  # noqa: E402

from openledger.models import TINY_FAMILIES, save_tiny_model  # noqa: E402
from openledger.serve import Engine, EngineConfig, SamplingParams  # noqa: E402
from openledger.serve.ops.cpu_kernels import c_compiler  # noqa: E402

NEW = 5
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPECS: dict[str, tuple[int, list[str], dict[str, Any]]] = {
    "lora": (8, ALL, {}),
    "dora": (4, ["q_proj", "v_proj", "o_proj", "down_proj"], {"use_dora": True,
             "alpha_pattern": {"v_proj": 3.0}}),
    "dora-rs": (6, ["k_proj", "gate_proj", "up_proj"], {"use_dora": True, "use_rslora": True,
                "rank_pattern": {"k_proj": 2}}),
    "rslora": (2, ["k_proj", "o_proj"], {"use_rslora": True}),
    "head": (4, ["q_proj", "v_proj"], {"modules_to_save": ["lm_head"]}),
    "embed-dora": (3, ["down_proj"], {"use_dora": True, "modules_to_save": ["embed_tokens"]}),
    "both": (5, ["o_proj", "up_proj"], {"modules_to_save": ["lm_head", "embed_tokens"]}),
}  # fmt: skip
BASES: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2-shaped": ("llama", {"tie_word_embeddings": True, "hidden_size": 192,
                                 "num_attention_heads": 3, "num_key_value_heads": 1}),
    "qwen3": ("qwen3", {}),
    "gemma2": ("gemma2", {}),
    "gemma3": ("gemma3_text", {}),
    "phi3": ("phi3", {}),
}  # fmt: skip
FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
         "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}  # fmt: skip
"""Phi-3's checkpoints (and so PEFT's adapters of them) fuse q|k|v and gate|up."""


def targets_of(family: str, targets: list[str]) -> list[str]:
    if family != "phi3":
        return targets
    return sorted({FUSED.get(t, t) for t in targets})


@pytest.fixture(scope="module", params=list(BASES))
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    family, overrides = BASES[request.param]
    if family not in TINY_FAMILIES:
        pytest.skip(f"openledger.models has no tiny {family} config yet")
    root = tmp_path_factory.mktemp(f"dora-{request.param}")
    base = save_tiny_model(root / "base", family, seed=3, **overrides)
    folders = {
        name: make_peft_adapter(
            base, root / name, r=r, targets=targets_of(family, t), seed=40 + i, **kw
        )
        for i, (name, (r, t, kw)) in enumerate(SPECS.items())
    }
    return base, folders


def engine_for(base: Path, folders: dict[str, Path], backend: str) -> Engine:
    config = EngineConfig(
        max_num_seqs=len(SPECS) + 1,
        block_size=4,
        num_blocks=128,
        lora_backend=backend,
        max_adapter_heads=3,
    )
    engine = Engine(base, config)
    for name, folder in folders.items():
        engine.add_adapter(name, folder)
    return engine


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_one_mixed_batch_matches_peft(setup: Any, backend: str) -> None:
    from transformers import AutoConfig

    if backend == "cpu" and c_compiler() is None:
        pytest.skip("the CPU LoRA kernel is not built here (no C compiler)")
    base, folders = setup
    engine = engine_for(base, folders, backend)
    assert engine.adapters is not None
    assert engine.adapters.state.backend_name == backend
    vocab = AutoConfig.from_pretrained(base).vocab_size
    gen = torch.Generator().manual_seed(1)
    choices: list[str | None] = [*SPECS, None]
    prompts = [torch.randint(3, vocab, (4 + 2 * i,), generator=gen).tolist() for i in
               range(len(choices))]  # fmt: skip
    params = [
        SamplingParams(max_tokens=NEW, min_tokens=NEW, adapter=c, logprobs=vocab) for c in choices
    ]
    outputs = engine.generate(prompts, params)
    config = AutoConfig.from_pretrained(base)
    terms = forward_terms(config, max(len(p) for p in prompts) + NEW)
    terms += config.hidden_size + config.vocab_size  # the head, then the log-softmax
    plain = {}
    for prompt, choice, output in zip(prompts, choices, outputs, strict=True):
        tokens, want = peft_generate(base, choice and folders[choice], prompt, NEW)
        assert output.token_ids == tokens, choice
        assert output.logprobs is not None
        got = torch.tensor(
            [[row[t] for t in range(vocab)] for row in output.logprobs], dtype=torch.float64
        )
        assert_rows_close(got, want, dtype=torch.float32, terms=terms, msg=f"{choice}: ")
        plain[choice] = want
    # NOTE: each feature changes the outputs: serving it as a plain LoRA would not pass
    _, base_alone = peft_generate(base, None, prompts[0], NEW)
    assert not torch.allclose(plain["lora"], base_alone, atol=1e-3)
