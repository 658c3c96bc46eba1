"""Acceptance: mixed-adapter batches give the tokens of transformers + PEFT, per request.

Eight adapters of different ranks and target modules, a weighted mix, and requests
without adapter share the engine; only 4 device slots, so adapters are evicted and
loaded again just in time while the batch runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.serve.serve_lora_factory import make_peft_adapter  # noqa: E402

from openledger.exceptions import (  # noqa: E402
    AdapterFormatError,
    AdapterNotFoundError,
    ConfigError,
    InvalidRequestError,
)
from openledger.models import save_tiny_model  # noqa: E402
from openledger.serve import Engine, EngineConfig, SamplingParams  # noqa: E402
from openledger.serve.ops.cpu_kernels import c_compiler  # noqa: E402

NEW = 6
SPECS: list[tuple[int, list[str], dict[str, Any]]] = [
    (8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], {}),
    (4, ["q_proj", "v_proj"], {}),
    (2, ["k_proj", "o_proj"], {"use_rslora": True}),
    (16, ["gate_proj", "up_proj", "down_proj"], {}),
    (3, ["q_proj"], {"lora_alpha": 1.5}),
    (5, ["down_proj"], {"alpha_pattern": {"down_proj": 20.0}}),
    (6, ["q_proj", "k_proj", "v_proj"], {}),
    (12, ["o_proj", "gate_proj"], {}),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lora-engine")
    base = save_tiny_model(root / "base", "llama", seed=11)
    folders = {
        f"a{i}": make_peft_adapter(base, root / f"a{i}", r=r, targets=t, seed=20 + i, **kw)
        for i, (r, t, kw) in enumerate(SPECS)
    }
    return {"base": base, "folders": folders, "root": root}


@pytest.fixture(scope="module")
def peft_model(setup: dict[str, Any]) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(setup["base"], dtype=torch.float32)
    folders = setup["folders"]
    peft = PeftModel.from_pretrained(model, folders["a0"], adapter_name="a0")
    for name, folder in folders.items():
        if name != "a0":
            peft.load_adapter(folder, adapter_name=name)
    peft.add_weighted_adapter(["a0", "a1"], [0.7, 0.3], "mix", combination_type="cat")
    return peft.eval()


def peft_tokens(model: Any, prompt: list[int], adapter: str | None) -> list[int]:
    ids = torch.tensor([prompt])
    kwargs = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False}
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                out = model.generate(input_ids=ids, **kwargs)
        else:
            model.set_adapter(adapter)
            out = model.generate(input_ids=ids, **kwargs)
    return [int(t) for t in out[0, len(prompt) :]]


@pytest.fixture(scope="module")
def engine(setup: dict[str, Any]) -> Engine:
    config = EngineConfig(max_num_seqs=4, block_size=4, num_blocks=96)
    engine = Engine(setup["base"], config)
    for name, folder in setup["folders"].items():
        engine.add_adapter(name, folder)
    return engine


@pytest.mark.parametrize("backend", ["cpu", "torch"], ids=["cpu-kernel", "torch-paths"])
def test_mixed_batch_matches_peft_per_request(
    engine: Engine, setup: dict[str, Any], peft_model: Any, backend: str
) -> None:
    assert engine.adapters is not None
    if backend == "cpu" and engine.adapters.state.backend_name != "cpu":
        assert c_compiler() is None  # NOTE: "auto" takes the kernel wherever it is built
        pytest.skip("the CPU LoRA kernel is not built here (no C compiler)")
    if backend != engine.adapters.state.backend_name:
        config = engine.config.model_copy(update={"lora_backend": backend})
        engine = Engine(setup["base"], config)
        for name, folder in setup["folders"].items():
            engine.add_adapter(name, folder)
    assert engine.adapters is not None
    assert engine.adapters.state.backend_name == backend
    check_mixed_batch(engine, peft_model)


def check_mixed_batch(engine: Engine, peft_model: Any) -> None:
    gen = torch.Generator().manual_seed(0)
    shared = torch.randint(3, 300, (9,), generator=gen).tolist()  # same prompt, many adapters
    choices: list[Any] = [f"a{i}" for i in range(8)] + [None, {"a0": 0.7, "a1": 0.3}, None]
    prompts = [shared if i % 2 else torch.randint(3, 300, (5 + i,), generator=gen).tolist()
               for i in range(len(choices))]  # fmt: skip
    params = [SamplingParams(max_tokens=NEW, min_tokens=NEW, adapter=c) for c in choices]
    outputs = engine.generate(prompts, params)
    for prompt, choice, output in zip(prompts, choices, outputs, strict=True):
        name = "mix" if isinstance(choice, dict) else choice
        assert output.token_ids == peft_tokens(peft_model, prompt, name), choice
    base_only = outputs[8].token_ids
    assert sum(o.token_ids != base_only for o in outputs[:8]) >= 6  # the adapters matter
    usage = outputs[9].usage
    assert usage is not None
    assert (usage.adapters, usage.adapter_weights) == (("a0", "a1"), (0.7, 0.3))
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(prompts[9]), NEW)
    assert outputs[8].usage is not None
    assert outputs[8].usage.adapters == ()


def test_cached_prefix_never_serves_another_adapter(engine: Engine, peft_model: Any) -> None:
    prompt = list(range(40, 57))  # four full blocks of 4 tokens
    for choice in ("a2", "a2", "a6", None, "a6"):
        params = SamplingParams(max_tokens=NEW, min_tokens=NEW, adapter=choice)
        output = engine.generate(prompt, params)[0]
        assert output.token_ids == peft_tokens(peft_model, prompt, choice), choice
    again = engine.generate(prompt, SamplingParams(max_tokens=2, adapter="a6"))[0]
    assert again.metrics.num_cached_tokens > 0  # same adapter: the prefix is reused


def test_bad_adapters_refuse_only_their_request(
    engine: Engine, setup: dict[str, Any], tmp_path: Path
) -> None:
    good = engine.add_request([5, 6, 7], SamplingParams(max_tokens=3, adapter="a3"))
    with pytest.raises(AdapterNotFoundError, match="'nope'"):
        engine.add_request([5, 6, 7], SamplingParams(adapter="nope"))
    mixed = SamplingParams(adapter={"a1": 1.0, "x": 2.0})
    with pytest.raises(AdapterNotFoundError):
        engine.generate([[1, 2], [3, 4]], [SamplingParams(adapter="a1"), mixed])
    broken = Path(shutil.copytree(setup["folders"]["a1"], tmp_path / "broken"))
    engine.add_adapter("broken", broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(AdapterFormatError):
        engine.add_request([1, 2, 3], SamplingParams(adapter="broken"))
    with pytest.raises(ConfigError, match="registered"):
        engine.add_adapter("a1", setup["folders"]["a1"])
    with pytest.raises(InvalidRequestError):
        SamplingParams(adapter={"a1": "heavy"})  # type: ignore[dict-item]
    finals = {o.request_id: o for o in iter_until_done(engine)}
    assert finals[good].finish_reason == "length"
    assert len(finals[good].token_ids) == 3


def iter_until_done(engine: Engine) -> list[Any]:
    done = []
    while engine.has_unfinished_requests():
        done += [o for o in engine.step() if o.finished]
    return done


def test_engine_without_adapter_slots(setup: dict[str, Any]) -> None:
    engine = Engine(setup["base"], EngineConfig(max_num_seqs=2, num_blocks=16, max_adapter_slots=0))
    with pytest.raises(ConfigError, match="serves no adapters"):
        engine.add_adapter("a0", setup["folders"]["a0"])
    with pytest.raises(ConfigError, match="below max_num_seqs"):
        Engine(setup["base"], EngineConfig(max_num_seqs=4, num_blocks=16, max_adapter_slots=2))
