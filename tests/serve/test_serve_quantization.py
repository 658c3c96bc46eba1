"""Quantised base weights (``EngineConfig.quantization``): int8 weight-only and FP8.

The reference for a quantised engine is the same model with every quantised weight
replaced by its dequantised value (``Q * scale``), written as an ordinary fp32 checkpoint
and served by transformers (+ PEFT for adapters) or by our fp32 engine: the two compute
the same function, so they agree up to float32 rounding, whatever the quantisation error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import missing_reference
from tests.numerics import abs_products, assert_rows_close, assert_within_rounding, forward_terms
from tests.serve.serve_lora_factory import make_peft_adapter, peft_generate

from openledger.models import save_tiny_model
from openledger.serve import Engine, EngineConfig, SamplingParams
from openledger.serve.layers.linear import KERNEL_MAX_ROWS, Linear
from openledger.serve.layers.quant import Quantization, QuantizedWeight, quantize_model
from openledger.serve.ops.cpu_kernels import cpu_kernels

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _kernels() -> None:
    if cpu_kernels() is None:
        missing_reference("no C compiler for the kernels")


def dequantised_checkpoint(base: Path, out: Path, scheme: Quantization) -> Path:
    """``base`` with every projection and the LM head replaced by their dequantised
    values (a tied head becomes an untied one: the embedding lookup keeps full precision,
    as the engine does)."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    config = json.loads((base / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(base.glob("*.safetensors")):
        tensors.update(load_file(file))
    for name, tensor in list(tensors.items()):
        if name.endswith(".weight") and name.split(".")[-2] in _PROJECTIONS:
            tensors[name] = QuantizedWeight(tensor, scheme).dequantize(torch.float32)
    head = tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"])
    tensors["lm_head.weight"] = QuantizedWeight(head, scheme).dequantize(torch.float32)
    config["tie_word_embeddings"] = False
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config))
    for file in base.iterdir():
        if file.suffix != ".safetensors" and file.name != "config.json" and file.is_file():
            (out / file.name).write_bytes(file.read_bytes())
    return out


# --- the quantised weight itself ---------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 70),
    spread=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_int8_rounds_each_row_to_its_own_scale(
    rows: int, cols: int, spread: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * spread
    w[0] = 0.0  # an all-zero row keeps scale 1 and zeros
    q = QuantizedWeight(w, "int8")
    assert q.data.dtype == torch.int8
    assert q.scale.dtype == torch.float32
    amax = w.abs().amax(dim=1)
    want_scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    assert torch.equal(q.scale, want_scale)
    assert int(q.data.abs().max()) <= 127
    assert torch.equal(q.data[0], torch.zeros(cols, dtype=torch.int8))
    # round to nearest: each weight within half a step of its row's grid
    error = (q.dequantize(torch.float64) - w.double()).abs()
    step = q.scale.double()[:, None]
    assert bool((error <= step * (0.5 + 1e-6)).all())
    # the row's largest weight is represented exactly (up to the scale's rounding)
    assert bool((q.data.abs().amax(dim=1)[1:] == 127).all())


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_fp8_keeps_e4m3_relative_precision(rows: int, cols: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    q = QuantizedWeight(w, "fp8")
    assert q.data.dtype == torch.float8_e4m3fn
    assert torch.equal(q.scale, w.abs().amax(dim=1) / 448)
    scaled = w.double() / q.scale.double()[:, None]
    got = q.data.double()
    normal = scaled.abs() >= 2.0**-6  # E4M3's smallest normal
    # 3 mantissa bits: a normal value within 2^-4 of itself; subnormals within 2^-10
    assert bool(((got - scaled).abs()[normal] <= scaled.abs()[normal] * 2.0**-4).all())
    assert bool(((got - scaled).abs()[~normal] <= 2.0**-10).all())


def test_bad_weights_and_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="quantization must be one of"):
        QuantizedWeight(torch.randn(3, 4), "int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D floating-point"):
        QuantizedWeight(torch.randn(3), "int8")
    with pytest.raises(ValueError, match="2-D floating-point"):
        QuantizedWeight(torch.ones(3, 4, dtype=torch.int32), "int8")
    bad = torch.randn(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="inf or NaN"):
        QuantizedWeight(bad, "fp8")
    linear = Linear(4, (3,))
    linear.load_slice("weight", torch.randn(3, 4))
    linear.quantize("int8")
    assert linear.weight.shape == (0, 4)  # the full-precision weight is freed
    with pytest.raises(ValueError, match="already quantised"):
        linear.quantize("int8")
    with pytest.raises(ValueError, match="loaded before quantising"):
        linear.load_slice("weight", torch.randn(3, 4))


# --- the projection ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 33, 70, KERNEL_MAX_ROWS + 1])
def test_quantised_projection_equals_the_dequantised_weight(
    scheme: Quantization, kernels: bool, rows: int
) -> None:
    if kernels:
        _kernels()
    torch.manual_seed(rows)
    outputs, inputs = 50, 300  # panels of 24 do not divide 50, depth slices do not divide 300
    weight, bias = torch.randn(outputs, inputs), torch.randn(outputs)
    linear = Linear(inputs, (20, 30), bias=True)
    linear.load_slice("weight", weight[:20], 0)
    linear.load_slice("weight", weight[20:], 1)
    linear.load_slice("bias", bias[:20], 0)
    linear.load_slice("bias", bias[20:], 1)
    linear.packed.configure(packing=True, use_kernel=kernels)
    linear.quantize(scheme)
    deq = linear.base_weight()
    assert deq.shape == (outputs, inputs)
    assert deq.dtype == torch.float32
    assert torch.equal(deq, QuantizedWeight(weight, scheme).dequantize())
    x = torch.randn(rows, inputs)
    got = linear(x)
    want = x.double() @ deq.double().T + bias.double()
    # one more rounding than the dot product: the scale multiplies the sum
    bound = abs_products(x, deq) + bias.double().abs()
    assert_within_rounding(got, want, bound=bound, dtype=torch.float32, terms=inputs + 3,
                           both_rounded=False)  # fmt: skip


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
@pytest.mark.parametrize(("outputs", "inputs"), [(50, 33), (24, 64), (7, 1)])
def test_the_packed_copy_replaces_the_row_major_weight(
    compute: str, outputs: int, inputs: int
) -> None:
    """Once the kernel has packed an int8 weight only the panels are kept (a byte a weight,
    plus the panels' padding); the weight unpacked from them is the one quantised."""
    _kernels()
    weight = torch.randn(outputs, inputs)
    q = QuantizedWeight(weight, "int8", compute=compute)  # type: ignore[arg-type]
    original = q.data.clone()
    before = q.nbytes
    q.linear(torch.randn(3, inputs), None)  # packs
    assert q._data is None
    assert torch.equal(q.data, original)
    assert q.shape == (outputs, inputs)
    width = 32 if q.uses_bf16_dot else 24
    padded = -(-outputs // width) * width * (inputs + (inputs % 2 if q.uses_bf16_dot else 0))
    assert q.nbytes == padded + q.scale.nbytes
    assert before == original.nbytes + q.scale.nbytes  # the row-major weight, before
    assert torch.equal(q.dequantize(), original.float() * q.scale[:, None])


def test_the_int8_kernel_reads_packed_panels_and_refuses_misfits() -> None:
    _kernels()
    from openledger.serve.ops import linear_cpu

    q = torch.randint(-127, 128, (50, 40), dtype=torch.int8)
    scale = torch.rand(50) + 0.5
    packed = linear_cpu.pack_linear_int8(q)
    assert packed.dtype == torch.int8
    assert packed.shape[1] == 40
    x = torch.randn(3, 40)
    deq = q.float() * scale[:, None]
    got = linear_cpu.linear_int8(x, packed, scale, 50, None)
    assert_within_rounding(got, x.double() @ deq.double().T, bound=abs_products(x, deq),
                           dtype=torch.float32, terms=42, both_rounded=False)  # fmt: skip
    with pytest.raises(ValueError, match="int8 CPU tensor"):
        linear_cpu.pack_linear_int8(q.float())
    with pytest.raises(ValueError, match="does not hold 80 outputs"):
        linear_cpu.linear_int8(x, packed, scale, 80, None)
    with pytest.raises(ValueError, match="scale"):
        linear_cpu.linear_int8(x, packed, scale[:10], 50, None)
    with pytest.raises(ValueError, match=r"packed: a contiguous torch\.int8"):
        linear_cpu.linear_int8(x, packed.float(), scale, 50, None)


def _bf16_dot() -> None:
    _kernels()
    from openledger.serve.ops.linear_cpu import has_bf16_dot

    if not has_bf16_dot():
        pytest.skip("this CPU has no AVX512-BF16 dot products (int8 computes in float32)")


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 33, 70])
@pytest.mark.parametrize(("outputs", "inputs"), [(50, 33), (64, 300), (7, 1)])
def test_the_bf16_int8_kernel_equals_rounded_activations_times_the_dequantised_weight(
    rows: int, outputs: int, inputs: int
) -> None:
    """bfloat16 products of int8 weights are exact in float32: the kernel is the float64
    product of the bfloat16-rounded activations up to float32 sums; one or two rows take
    float32 arithmetic over the same panels (unrounded activations)."""
    _bf16_dot()
    from openledger.serve.ops import linear_cpu

    torch.manual_seed(rows * inputs)
    q = torch.randint(-127, 128, (outputs, inputs), dtype=torch.int8)
    scale, bias = torch.rand(outputs) + 0.5, torch.randn(outputs)
    packed = linear_cpu.pack_linear_int8_bf16(q)
    x = torch.randn(rows, inputs)
    got = linear_cpu.linear_int8_bf16(x, packed, scale, outputs, bias)
    deq = q.double() * scale.double()[:, None]
    rounded = x.double() if rows <= 2 else x.bfloat16().double()
    want = rounded @ deq.T + bias.double()
    bound = rounded.abs() @ deq.abs().T + bias.double().abs()
    assert_within_rounding(got, want, bound=bound, dtype=torch.float32, terms=inputs + 3,
                           both_rounded=False)  # fmt: skip
    # and the rounding is real: float32 activations give another result (3 rows and more)
    if inputs > 1 and rows > 2:
        exact = x.double() @ deq.T + bias.double()
        assert not torch.allclose(got.double(), exact, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="does not hold"):
        linear_cpu.linear_int8_bf16(x, linear_cpu.pack_linear_int8(q), scale, outputs, bias)


def test_bf16_compute_falls_back_to_float32_without_avx512_bf16() -> None:
    _kernels()
    from openledger.serve.ops.linear_cpu import has_bf16_dot

    if has_bf16_dot():
        pytest.skip("this CPU has AVX512-BF16 (the fallback runs on the lower CPU paths)")
    weight, x = torch.randn(40, 64), torch.randn(5, 64)
    results = []
    for compute in ("float32", "bfloat16"):
        q = QuantizedWeight(weight, "int8", compute=compute)  # type: ignore[arg-type]
        assert not q.uses_bf16_dot
        results.append(q.linear(x, None))
    assert torch.equal(results[0], results[1])


def test_bf16_compute_engine_stays_within_bfloat16_rounding_of_the_dequantised_base(
    tmp_path: Path,
) -> None:
    """``quantized_compute="bfloat16"``: each projection's input is rounded to bfloat16
    once, so logits stay within that many bfloat16 roundings (4 projections a layer and
    the head) of the dequantised checkpoint's, and the greedy tokens agree."""
    _bf16_dot()
    from transformers import AutoConfig

    base = save_tiny_model(tmp_path / "base", "llama", seed=7)
    reference = dequantised_checkpoint(base, tmp_path / "dequantised", "int8")
    config = AutoConfig.from_pretrained(reference)
    settings_ = {"block_size": 4, "num_blocks": 96, "quantization": "int8"}
    fast = Engine(base, EngineConfig(**settings_, quantized_compute="bfloat16"))  # type: ignore[arg-type]
    assert all(
        m.packed.quantized is not None and m.packed.quantized.uses_bf16_dot
        for m in fast.runner.model.modules()
        if isinstance(m, Linear)
    )
    prompt = fast.tokenizer("Rounded activations, exact int8 weights").input_ids
    vocab, new = config.vocab_size, 8
    params = SamplingParams(max_tokens=new, min_tokens=new, logprobs=vocab)
    output = fast.generate([prompt], params)[0]
    tokens, want = peft_generate(reference, None, prompt, new)
    assert output.logprobs is not None
    got = torch.tensor(
        [[row[t] for t in range(vocab)] for row in output.logprobs], dtype=torch.float64
    )
    roundings = 4 * config.num_hidden_layers + 1
    assert_rows_close(got, want, dtype=torch.bfloat16, terms=roundings, both_rounded=False)
    assert output.token_ids == tokens


# --- the engine --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "scheme", "kernels"),
    [("llama", "int8", True), ("qwen2", "int8", True), ("qwen2", "fp8", True),
     ("llama", "int8", False)],
)  # fmt: skip
def test_quantised_engine_with_mixed_adapters_equals_dequantised_base_with_peft(
    family: str, scheme: Quantization, kernels: bool, tmp_path: Path
) -> None:
    """A batch of two LoRA adapters and the base on a quantised base (qwen2: tied head,
    q/k/v biases) gives the tokens and log-probabilities transformers + PEFT give on the
    dequantised checkpoint."""
    from transformers import AutoConfig

    if kernels:
        _kernels()
    base = save_tiny_model(tmp_path / "base", family, seed=7)  # type: ignore[arg-type]
    reference = dequantised_checkpoint(base, tmp_path / "dequantised", scheme)
    targets = list(_PROJECTIONS)
    adapters = {
        name: make_peft_adapter(reference, tmp_path / name, r=4, targets=targets, seed=seed)
        for name, seed in (("a", 1), ("b", 2))
    }
    engine = Engine(
        base,
        EngineConfig(block_size=4, num_blocks=96, quantization=scheme, cpu_kernels=kernels),
    )
    for name, folder in adapters.items():
        engine.add_adapter(name, folder)
    config = AutoConfig.from_pretrained(reference)
    vocab, new = config.vocab_size, 8
    prompt = engine.tokenizer("Quantised weights, full-precision adapters").input_ids
    choices = ("a", None, "b")
    params = [
        SamplingParams(max_tokens=new, min_tokens=new, adapter=c, logprobs=vocab) for c in choices
    ]
    outputs = engine.generate([prompt] * len(choices), params)
    terms = forward_terms(config, len(prompt) + new) + config.hidden_size + vocab
    for choice, output in zip(choices, outputs, strict=True):
        tokens, want = peft_generate(reference, adapters[choice] if choice else None, prompt, new)
        assert output.token_ids == tokens, (family, scheme, choice)
        assert output.logprobs is not None
        got = torch.tensor(
            [[row[t] for t in range(vocab)] for row in output.logprobs], dtype=torch.float64
        )
        assert_rows_close(got, want, dtype=torch.float32, terms=terms, msg=f"{choice}: ")
    # quantisation is real: the full-precision base gives other log-probabilities
    full = Engine(base, EngineConfig(block_size=4, num_blocks=96))
    plain = full.generate([prompt], SamplingParams(max_tokens=1, logprobs=vocab))[0]
    quantised = engine.generate([prompt], SamplingParams(max_tokens=1, logprobs=vocab))[0]
    assert plain.logprobs is not None
    assert quantised.logprobs is not None
    first = [plain.logprobs[0][t] for t in range(vocab)]
    assert max(abs(a - quantised.logprobs[0][t]) for t, a in enumerate(first)) > 1e-4


def test_quantised_engine_keeps_a_quarter_of_the_projection_bytes(tmp_path: Path) -> None:
    base = save_tiny_model(tmp_path / "base", "llama", seed=3)
    engine = Engine(base, EngineConfig(block_size=4, num_blocks=16, quantization="int8"))
    model = engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears
    assert all(m.weight.numel() == 0 for m in linears)
    assert model.lm_head is not None
    assert model.lm_head.numel() == 0
    for m in linears:
        q = m.packed.quantized
        assert q is not None
        assert q.data.dtype == torch.int8
        assert q.data.numel() == m.input_size * sum(m.output_sizes)
    with pytest.raises(ValueError, match="quantization"):
        Engine(base, EngineConfig(quantization="int4"))  # type: ignore[arg-type]


def test_int8_smollm2_answers_the_demo_questions_as_its_dequantised_weights(
    tmp_path: Path,
) -> None:
    """SmolLM2 in int8 against the fp32 engine on its dequantised checkpoint: the same 32
    greedy tokens for every question of the demo."""
    _kernels()
    from openledger.demo.corpus import load_datasets
    from openledger.models import resolve_model

    base = Path(resolve_model("smollm2-135m-instruct").path)
    reference = dequantised_checkpoint(base, tmp_path / "dequantised", "int8")
    config = EngineConfig(max_num_seqs=8, kv_cache_memory=64 * 2**20)
    quantised = Engine(base, config.model_copy(update={"quantization": "int8"}))
    want_engine = Engine(reference, config)
    questions = [q.text for d in load_datasets() for q in d.questions]
    assert len(questions) >= 4
    prompts = [
        quantised.tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    params = SamplingParams(max_tokens=32, min_tokens=32)
    got = [o.token_ids for o in quantised.generate(prompts, params)]
    want = [o.token_ids for o in want_engine.generate(prompts, params)]
    assert got == want


def _quantised_weights(model: torch.nn.Module) -> list[QuantizedWeight]:
    found = [m.packed.quantized for m in model.modules() if isinstance(m, Linear)]
    found.append(model.quantized_head)  # type: ignore[arg-type, operator]
    assert found
    assert all(q is not None for q in found)
    return found  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("family", "scheme"), [("llama", "int8"), ("qwen2", "int8"), ("qwen2", "fp8")]
)
def test_quantising_while_loading_equals_quantising_the_loaded_model(
    tmp_path: Path, family: str, scheme: Quantization
) -> None:
    base = save_tiny_model(tmp_path / "base", family, seed=11)  # type: ignore[arg-type]
    settings = {"block_size": 4, "num_blocks": 32}
    streamed = Engine(base, EngineConfig(**settings, quantization=scheme))
    whole = Engine(base, EngineConfig(**settings))
    quantize_model(whole.runner.model, scheme)
    ours, reference = (_quantised_weights(e.runner.model) for e in (streamed, whole))
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.data.dtype == theirs.data.dtype
        assert torch.equal(mine.data.view(torch.uint8), theirs.data.view(torch.uint8))
        assert torch.equal(mine.scale, theirs.scale)
    biases = [
        (a.bias, b.bias)
        for a, b in zip(streamed.runner.model.modules(), whole.runner.model.modules(), strict=True)
        if isinstance(a, Linear) and isinstance(b, Linear) and a.bias is not None
    ]
    assert (family == "qwen2") == bool(biases)
    assert all(torch.equal(a, b) for a, b in biases)
    params = SamplingParams(max_tokens=12, temperature=0.0)
    prompts = [[1, 5, 9, 3], [2, 8, 4, 4, 7, 1]]
    assert [o.token_ids for o in streamed.generate(prompts, params)] == [
        o.token_ids for o in whole.generate(prompts, params)
    ]


def test_a_quantised_load_holds_at_most_two_projections_in_full_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = save_tiny_model(tmp_path / "base", "llama", seed=2)
    # NOTE: a projection counts while its weight is allocated in full precision (not on
    # meta, not yet quantised away); the count is taken after every slice loaded
    projections: list[Linear] = []
    held: list[int] = []
    init, load_slice = Linear.__init__, Linear.load_slice

    def tracked(self: Linear, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        projections.append(self)

    def counting(self: Linear, param_name: str, tensor: torch.Tensor, index: int = 0) -> None:
        load_slice(self, param_name, tensor, index)
        held.append(sum(1 for p in projections if not p.weight.is_meta and p.weight.numel()))

    monkeypatch.setattr(Linear, "__init__", tracked)
    monkeypatch.setattr(Linear, "load_slice", counting)
    Engine(base, EngineConfig(block_size=4, num_blocks=16, quantization="int8"))
    count = len(projections)
    assert count >= 4 * 2  # two layers or more, four projections each (qkv, o, gate_up, down)
    assert held
    assert max(held) <= 2
    projections.clear()
    held.clear()
    Engine(base, EngineConfig(block_size=4, num_blocks=16))
    assert max(held) == count  # without quantisation every projection is loaded whole


def test_a_projection_stored_twice_is_refused_when_quantising_while_loading(
    tmp_path: Path,
) -> None:
    from safetensors.torch import load_file, save_file

    from openledger.exceptions import UnsupportedModelError

    base = save_tiny_model(tmp_path / "base", "llama", seed=2)
    (weights,) = base.glob("*.safetensors")
    tensors = load_file(str(weights))
    name = "model.layers.0.self_attn.o_proj.weight"
    save_file({name: tensors[name]}, str(base / "zz-extra.safetensors"))
    with pytest.raises(UnsupportedModelError, match=r"o_proj\.weight: the checkpoint holds"):
        Engine(base, EngineConfig(block_size=4, num_blocks=16, quantization="int8"))


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("rows_per_block", [1, 5, 37, 100])
def test_quantising_block_by_block_equals_the_whole_weight_at_once(
    scheme: Quantization, rows_per_block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openledger.serve.layers import quant

    generator = torch.Generator().manual_seed(rows_per_block)
    weight = torch.randn(37, 19, generator=generator) * torch.rand(37, 1, generator=generator)
    weight[3] = 0.0  # an all-zero row keeps scale 1
    monkeypatch.setattr(quant, "_BLOCK_ELEMENTS", 19 * rows_per_block)
    found = QuantizedWeight(weight, scheme)
    limit = 127.0 if scheme == "int8" else 448.0
    scale = weight.abs().amax(dim=1) / limit
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = weight / scale[:, None]
    if scheme == "int8":
        expected = scaled.round().clamp(-127, 127).to(torch.int8)
    else:
        expected = scaled.clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(found.scale, scale)
    assert torch.equal(found.data.view(torch.uint8), expected.view(torch.uint8))
