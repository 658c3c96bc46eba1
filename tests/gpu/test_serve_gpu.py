"""GPU-only serving checks (skipped without CUDA): Triton decode kernel and the engine on CUDA.

Run on a GPU machine with ``pytest tests/gpu -q``; the same checks run on CPU under the
Triton interpreter in tests/serve with small shapes and fp32/fp16 only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
]

SHAPES = [  # (heads, kv_heads, head_dim): SmolLM2-135M, Llama-3-8B, Qwen2-0.5B
    (9, 3, 64),
    (32, 8, 128),
    (14, 2, 64),
]


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), SHAPES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("window", [None, 100])
def test_triton_decode_matches_reference_on_cuda(
    heads: int, kv_heads: int, dim: int, dtype: str, window: int | None
) -> None:
    from openledger.serve.ops import attention_torch as reference
    from openledger.serve.ops.attention_triton import paged_decode_attention

    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    lens = torch.tensor([1, 17, 300, 1024, 77], dtype=torch.int32, device="cuda")
    block_size, num_blocks = 16, 400
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, device="cuda", generator=gen).to(
        torch_dtype
    )
    v_cache = torch.randn_like(k_cache)
    table_width = -(-int(lens.max()) // block_size)
    tables = torch.randperm(num_blocks, device="cuda", generator=gen)[: len(lens) * table_width]
    tables = tables.view(len(lens), table_width).to(torch.int32)
    query = torch.randn(len(lens), heads, dim, device="cuda", generator=gen).to(torch_dtype)
    scale = dim**-0.5
    got = paged_decode_attention(
        query, k_cache, v_cache, tables, lens, scale=scale, sliding_window=window
    )
    want = reference.decode_attention(
        query.float(),
        k_cache.float(),
        v_cache.float(),
        tables,
        lens,
        scale=scale,
        sliding_window=window,
    )
    tolerance = {"float32": 1e-4, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=tolerance)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from openledger.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("gpu") / "qwen2", "qwen2", seed=3)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_engine_on_cuda_matches_transformers_greedy(tiny_folder: Path, backend: str) -> None:
    from transformers import AutoModelForCausalLM

    from openledger.serve import Engine, EngineConfig, SamplingParams

    config = EngineConfig(
        device="cuda", dtype="float32", block_size=16, num_blocks=64, attention_backend=backend
    )  # type: ignore[arg-type]
    engine = Engine(tiny_folder, config)
    prompts = ["The capital of France is", "def add(a, b):", "Numbers: 0 1 2 3 4 5"]
    outputs = engine.generate(prompts, SamplingParams(max_tokens=16))
    model = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32).to("cuda").eval()
    for out in outputs:
        ids = torch.tensor([out.prompt_token_ids], device="cuda")
        ref = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
        assert out.token_ids == ref


LORA_SPECS = [  # (rank, targets): different ranks and target modules in one batch
    (8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    (4, ["q_proj", "v_proj"]),
    (16, ["gate_proj", "up_proj", "down_proj"]),
    (3, ["k_proj", "o_proj"]),
]


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from tests.serve.serve_lora_factory import make_peft_adapter

    from openledger.models import save_tiny_model

    root = tmp_path_factory.mktemp("gpu-lora")
    base = save_tiny_model(root / "base", "llama", seed=11)
    folders = {
        f"a{i}": make_peft_adapter(base, root / f"a{i}", r=r, targets=t, seed=20 + i)
        for i, (r, t) in enumerate(LORA_SPECS)
    }
    return {"base": base, "folders": folders}


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_mixed_adapters_on_cuda_match_peft(lora_setup: dict[str, object], backend: str) -> None:
    """A batch mixing adapters, a weighted mix and no adapter: PEFT's tokens on the same GPU."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from openledger.serve import Engine, EngineConfig, SamplingParams

    base, folders = lora_setup["base"], lora_setup["folders"]
    assert isinstance(base, Path)
    assert isinstance(folders, dict)
    config = EngineConfig(device="cuda", dtype="float32", max_num_seqs=4, block_size=4,
                          num_blocks=96, lora_backend=backend)  # type: ignore[arg-type]  # fmt: skip
    engine = Engine(base, config)
    assert engine.adapters is not None
    assert engine.adapters.state.backend_name == backend
    for name, folder in folders.items():
        engine.add_adapter(name, folder)
    gen = torch.Generator().manual_seed(0)
    choices: list[object] = [*folders, None, {"a0": 0.7, "a1": 0.3}]
    prompts = [torch.randint(3, 300, (5 + 3 * i,), generator=gen).tolist() for i in range(6)]
    params = [SamplingParams(max_tokens=6, min_tokens=6, adapter=c) for c in choices]  # type: ignore[arg-type]
    outputs = engine.generate(prompts, params)

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = PeftModel.from_pretrained(model, folders["a0"], adapter_name="a0")
    for name, folder in folders.items():
        if name != "a0":
            peft.load_adapter(folder, adapter_name=name)
    peft.add_weighted_adapter(["a0", "a1"], [0.7, 0.3], "mix", combination_type="cat")
    peft = peft.to("cuda").eval()
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    for prompt, choice, output in zip(prompts, choices, outputs, strict=True):
        ids = torch.tensor([prompt], device="cuda")
        with torch.no_grad():
            if choice is None:
                with peft.disable_adapter():
                    want = peft.generate(input_ids=ids, **kwargs)
            else:
                peft.set_adapter("mix" if isinstance(choice, dict) else choice)
                want = peft.generate(input_ids=ids, **kwargs)
        assert output.token_ids == want[0, len(prompt) :].tolist(), choice
