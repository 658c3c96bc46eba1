"""The engine on CUDA in bfloat16 and float16, with CUDA graphs, adapters and quantised bases.

Collected everywhere, skipped without a CUDA device (and triton). Run on a GPU machine with
``pytest tests/gpu -q``; the CPU stand-in checks of the CUDA graph logic are in
tests/serve/test_serve_cuda_graphs.py.

How far a bfloat16 or float16 engine may be from the truth is measured, not guessed: the
reference is transformers in float32 on the same GPU, teacher-forced on the engine's own
tokens (one forward pass over prompt + output, so a near-tie that sends the two greedy
runs apart cannot hide the rest), and the yardstick is transformers itself in the
engine's dtype on the same tokens: its largest log-probability error is the dtype's
*drift* on this input. The engine, which rounds at other points of the same computation,
may err by a small multiple of it (:data:`DRIFT_FACTOR`), and each of its greedy tokens
must be the float32 argmax or within that tolerance of it (a near-tie may go either way).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
]

DRIFT_FACTOR = 4.0
"""How many times transformers' own drift in a dtype the engine may err by: both round
the same computation at different points (twice the error), and the largest error over a
few dozen rows is itself spread (twice again)."""

NEW_TOKENS = 16
DEVICE = "cuda"
_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _unit_roundoff(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) / 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from openledger.models import save_tiny_model

    root = tmp_path_factory.mktemp("engine-cuda")
    return {
        "llama": save_tiny_model(root / "llama", "llama", seed=11),
        "qwen2": save_tiny_model(root / "qwen2", "qwen2", seed=12),
    }


def _smollm2() -> Path:
    from openledger.exceptions import ModelNotAvailableError
    from openledger.models import resolve_model

    try:
        return Path(resolve_model("smollm2-135m-instruct").path)
    except ModelNotAvailableError as exc:  # NOTE: the offline package is not installed
        pytest.skip(f"SmolLM2 is not installed here: {exc}")


def _engine(folder: Path, dtype: str, **settings: Any) -> Any:
    from openledger.serve import Engine, EngineConfig

    base = {"device": DEVICE, "dtype": dtype, "block_size": 16, "num_blocks": 256}
    return Engine(folder, EngineConfig(**{**base, "max_num_seqs": 8, **settings}))


def _prompts(engine: Any, count: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    vocab = engine.model_config.vocab_size
    return [torch.randint(3, vocab, (5 + 7 * i,), generator=gen).tolist() for i in range(count)]


def _engine_logprobs(output: Any, vocab: int) -> Any:
    assert output.logprobs is not None
    rows = [[row[t] for t in range(vocab)] for row in output.logprobs]
    return torch.tensor(rows, dtype=torch.float64)


def _forced(model: Any, prompt: list[int], tokens: list[int]) -> Any:
    """``[len(tokens), vocab]`` float64 log-probabilities of each output position given
    the tokens before it (one forward pass of ``model``)."""
    ids = torch.tensor([prompt + tokens[:-1]], device=DEVICE)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 :]
    return torch.log_softmax(logits.double(), dim=-1).cpu()


def _check(got: Any, tokens: list[int], want: Any, drift: float, msg: str) -> None:
    """Engine log-probabilities ``got`` and greedy ``tokens`` against the float32
    reference ``want``, within ``DRIFT_FACTOR`` times the dtype's ``drift``."""
    tolerance = DRIFT_FACTOR * drift
    error = float((got - want).abs().max())
    assert error <= tolerance, f"{msg}: log-probabilities off by {error:.4f} > {tolerance:.4f}"
    for i, token in enumerate(tokens):
        gap = float(want[i].max() - want[i, token])
        assert gap <= tolerance, f"{msg}: token {i} ({token}) is {gap:.4f} below the argmax"


def _hf(folder: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(DEVICE).eval()


def _floor(dtype: torch.dtype) -> float:
    """The least drift assumed: one rounding of a log-probability of magnitude ~16."""
    return 16 * _unit_roundoff(dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("model", ["llama", "qwen2", "smollm2"])
def test_engine_in_half_precision_stays_within_the_dtypes_drift_of_transformers(
    folders: dict[str, Path], model: str, dtype: str
) -> None:
    """Greedy generation of four prompts of different lengths (decode steps replayed from
    CUDA graphs, padded from 3 rows to 4 and so on) against transformers float32."""
    from openledger.serve import SamplingParams

    folder = _smollm2() if model == "smollm2" else folders[model]
    torch_dtype = getattr(torch, dtype)
    engine = _engine(folder, dtype)
    assert engine.runner.graphs is not None, engine.runner.graphs_off_reason
    vocab = engine.model_config.vocab_size
    prompts = _prompts(engine, 4, seed=1)
    lengths = [NEW_TOKENS - 2 * i for i in range(4)]  # NOTE: the batch shrinks: 4, 3, 2, 1
    params = [SamplingParams(max_tokens=n, min_tokens=n, logprobs=vocab) for n in lengths]
    outputs = engine.generate(prompts, params)
    assert engine.runner.graphs.stats.replayed > 0
    reference, same_dtype = _hf(folder, torch.float32), _hf(folder, torch_dtype)
    for prompt, output in zip(prompts, outputs, strict=True):
        want = _forced(reference, prompt, output.token_ids)
        drift = float((_forced(same_dtype, prompt, output.token_ids) - want).abs().max())
        drift = max(drift, _floor(torch_dtype))
        got = _engine_logprobs(output, vocab)
        _check(got, output.token_ids, want, drift, f"{model} {dtype}")


LORA_SPECS = [  # (rank, targets): different ranks and targets in one batch
    (8, _ALL),
    (4, ["q_proj", "v_proj"]),
    (16, ["gate_proj", "up_proj", "down_proj"]),
]


@pytest.fixture(scope="module")
def adapters(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.serve.serve_lora_factory import make_peft_adapter

    root = tmp_path_factory.mktemp("engine-cuda-lora")
    found = {
        f"a{i}": make_peft_adapter(folders["llama"], root / f"a{i}", r=r, targets=t, seed=30 + i)
        for i, (r, t) in enumerate(LORA_SPECS)
    }
    found["wide"] = make_peft_adapter(folders["llama"], root / "wide", r=40, targets=_ALL, seed=40)
    return found


def _peft(folder: Path, adapters: dict[str, Path], dtype: torch.dtype) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    names = list(adapters)
    peft = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(adapters[name], adapter_name=name)
    return peft.to(DEVICE).eval()


def _peft_forced(peft: Any, choice: str | None, prompt: list[int], tokens: list[int]) -> Any:
    if choice is None:
        with peft.disable_adapter():
            return _forced(peft, prompt, tokens)
    peft.set_adapter(choice)
    return _forced(peft, prompt, tokens)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_adapters_in_half_precision_stay_within_the_dtypes_drift_of_peft(
    folders: dict[str, Path], adapters: dict[str, Path], dtype: str
) -> None:
    """A batch mixing three adapters (ranks 8, 4, 16, different targets) and no adapter,
    Triton LoRA kernels replayed from CUDA graphs, against PEFT float32 on the same GPU."""
    from openledger.serve import SamplingParams

    folder = folders["llama"]
    torch_dtype = getattr(torch, dtype)
    used = {name: adapters[name] for name in ("a0", "a1", "a2")}
    engine = _engine(folder, dtype, max_num_seqs=4)
    assert engine.adapters is not None
    assert engine.adapters.state.backend_name == "triton"
    for name, path in used.items():
        engine.add_adapter(name, path)
    vocab = engine.model_config.vocab_size
    choices: list[str | None] = ["a0", None, "a1", "a2"]
    prompts = _prompts(engine, len(choices), seed=2)
    params = [
        SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, adapter=c, logprobs=vocab)
        for c in choices
    ]
    outputs = engine.generate(prompts, params)
    graphs = engine.runner.graphs
    assert graphs is not None
    assert (4, True) in set(graphs.graph_keys())
    reference, same_dtype = _peft(folder, used, torch.float32), _peft(folder, used, torch_dtype)
    for prompt, choice, output in zip(prompts, choices, outputs, strict=True):
        want = _peft_forced(reference, choice, prompt, output.token_ids)
        drift = float(
            (_peft_forced(same_dtype, choice, prompt, output.token_ids) - want).abs().max()
        )
        got = _engine_logprobs(output, vocab)
        _check(got, output.token_ids, want, max(drift, _floor(torch_dtype)), f"{choice} {dtype}")


def test_cuda_graphs_on_and_off_give_the_same_tokens(
    folders: dict[str, Path], adapters: dict[str, Path]
) -> None:
    """float32, so that the two agree to rounding: base and adapter requests, steps padded
    to their buckets, then an adapter of rank 40 that grows the Triton stacks (the LoRA
    recordings are dropped and made again)."""
    from tests.numerics import assert_rows_close, forward_terms
    from transformers import AutoConfig

    from openledger.serve import SamplingParams

    folder = folders["llama"]
    config = AutoConfig.from_pretrained(folder)
    engines = [_engine(folder, "float32", max_num_seqs=4) for _ in range(2)]
    engines[1].runner.graphs = None  # NOTE: every step eager
    graphs = engines[0].runner.graphs
    assert graphs is not None
    vocab = config.vocab_size
    batches: list[list[str | None]] = [["a0", None, "a1"], ["wide", "a2", None]]
    results: list[list[Any]] = [[], []]
    for index, engine in enumerate(engines):
        added: set[str] = set()
        for batch_index, choices in enumerate(batches):
            for name in choices:
                if name is not None and name not in added:
                    engine.add_adapter(name, adapters[name])
                    added.add(name)
            prompts = _prompts(engine, len(choices), seed=10 + batch_index)
            params = [
                SamplingParams(
                    max_tokens=8 + 3 * i, min_tokens=8 + 3 * i, adapter=c, logprobs=vocab
                )
                for i, c in enumerate(choices)
            ]
            results[index] += engine.generate(prompts, params)
    assert graphs.stats.replayed > 0
    assert graphs.stats.dropped >= 1
    terms = 2 * (forward_terms(config, 64) + config.hidden_size + vocab)
    for on, off in zip(*results, strict=True):
        assert on.token_ids == off.token_ids
        assert_rows_close(
            _engine_logprobs(on, vocab),
            _engine_logprobs(off, vocab),
            dtype=torch.float32,
            terms=terms,
        )


def _dequantised(folder: Path, out: Path, scheme: str) -> Path:
    from tests.serve.test_serve_quantization import dequantised_checkpoint

    return dequantised_checkpoint(folder, out, scheme)  # type: ignore[arg-type]


def _fake_fp8_inputs(model: Any) -> None:
    """Round each projection's input rows to E4M3 with a per-row scale and back, as the
    engine's W8A8 projections do (``amax / 448`` per token) before their matmul."""
    projections = {*_ALL, "lm_head"}

    def rounded(_: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
        q = (rows.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        return ((q.float() * scale).to(x.dtype).reshape(x.shape), *args[1:])

    for name, module in model.named_modules():
        if name.split(".")[-1] in projections and isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(rounded)


def test_fp8_base_on_cuda_stays_within_the_drift_of_its_dequantised_weights(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """FP8 weights with bfloat16 activations. On compute capability >= 8.9 the engine's
    projections round their input rows to E4M3 too (W8A8, ``torch._scaled_mm``): the
    reference (transformers on the dequantised weights, float32) rounds them likewise,
    and so does the yardstick (the same in bfloat16), whose drift includes the inputs that
    round to another E4M3 value from bfloat16 than from float32."""
    from openledger.serve import SamplingParams
    from openledger.serve.layers.quant import _scaled_mm_fits

    folder = folders["llama"]
    reference_folder = _dequantised(folder, tmp_path / "fp8", "fp8")
    engine = _engine(folder, "bfloat16", quantization="fp8")
    hidden = engine.model_config.hidden_size
    probe = torch.zeros(4, hidden, dtype=torch.bfloat16, device=DEVICE)
    weight = torch.zeros(hidden, hidden, device=DEVICE).to(torch.float8_e4m3fn)
    w8a8 = _scaled_mm_fits(probe, weight)
    vocab = engine.model_config.vocab_size
    prompts = _prompts(engine, 3, seed=3)
    params = SamplingParams(max_tokens=8, min_tokens=8, logprobs=vocab)
    outputs = engine.generate(prompts, params)
    reference, same_dtype = (
        _hf(reference_folder, torch.float32),
        _hf(reference_folder, torch.bfloat16),
    )
    if w8a8:
        _fake_fp8_inputs(reference)
        _fake_fp8_inputs(same_dtype)
    for prompt, output in zip(prompts, outputs, strict=True):
        want = _forced(reference, prompt, output.token_ids)
        drift = float((_forced(same_dtype, prompt, output.token_ids) - want).abs().max())
        got = _engine_logprobs(output, vocab)
        _check(got, output.token_ids, want, max(drift, _floor(torch.bfloat16)), f"fp8 {w8a8=}")


def test_int8_base_on_cuda_in_float32_equals_its_dequantised_weights(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """int8 weight-only on CUDA dequantises each weight for its call: in float32 the same
    weights as the dequantised checkpoint, so the same tokens and log-probabilities up to
    float32 rounding of the same computation."""
    from tests.numerics import assert_rows_close, forward_terms
    from transformers import AutoConfig

    from openledger.serve import SamplingParams

    folder = folders["qwen2"]
    reference_folder = _dequantised(folder, tmp_path / "int8", "int8")
    config = AutoConfig.from_pretrained(folder)
    quantised = _engine(folder, "float32", quantization="int8")
    plain = _engine(reference_folder, "float32")
    vocab = config.vocab_size
    prompts = _prompts(quantised, 3, seed=4)
    params = SamplingParams(max_tokens=8, min_tokens=8, logprobs=vocab)
    got, want = quantised.generate(prompts, params), plain.generate(prompts, params)
    terms = 2 * (forward_terms(config, 40) + config.hidden_size + vocab)
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert_rows_close(
            _engine_logprobs(g, vocab), _engine_logprobs(w, vocab), dtype=torch.float32, terms=terms
        )


def test_int8_base_on_cuda_in_bfloat16_stays_within_the_drift_of_its_dequantised_weights(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """In bfloat16 the engine quantises the checkpoint's weights after rounding them to
    bfloat16, the reference (transformers on the dequantised float32 checkpoint) before:
    a few weights land one int8 step apart, within the bfloat16 drift of the yardstick."""
    from openledger.serve import SamplingParams

    folder = folders["qwen2"]
    reference_folder = _dequantised(folder, tmp_path / "int8", "int8")
    engine = _engine(folder, "bfloat16", quantization="int8")
    vocab = engine.model_config.vocab_size
    prompts = _prompts(engine, 3, seed=4)
    params = SamplingParams(max_tokens=8, min_tokens=8, logprobs=vocab)
    outputs = engine.generate(prompts, params)
    reference, same_dtype = (
        _hf(reference_folder, torch.float32),
        _hf(reference_folder, torch.bfloat16),
    )
    for prompt, output in zip(prompts, outputs, strict=True):
        want = _forced(reference, prompt, output.token_ids)
        drift = float((_forced(same_dtype, prompt, output.token_ids) - want).abs().max())
        got = _engine_logprobs(output, vocab)
        _check(got, output.token_ids, want, max(drift, _floor(torch.bfloat16)), "int8 bfloat16")
