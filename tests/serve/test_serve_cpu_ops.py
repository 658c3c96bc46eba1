"""The compiled CPU kernels as registered torch ops: every op of a real decode step (an
engine with an adapter, CPU kernels on) passes ``torch.library.opcheck`` on the arguments
that step gave it, the profiler names them, and fake tensors get their shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.conftest import missing_reference

torch = pytest.importorskip("torch")

from tests.serve.serve_lora_factory import make_peft_adapter  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from openledger.models import save_tiny_model  # noqa: E402
from openledger.serve import Engine, EngineConfig, SamplingParams  # noqa: E402
from openledger.serve.ops.cpu_kernels import c_compiler, cpu_kernels  # noqa: E402
from openledger.serve.ops.cpu_ops import INT8_OP_NAMES, OP_NAMES, load_ops  # noqa: E402

Call = tuple[Any, tuple[Any, ...], dict[str, Any]]


class _Recorder(TorchDispatchMode):
    """Keeps the last call of every ``openledger::`` op, its tensors cloned before it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, Call] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func.namespace == "openledger":
            self.calls[func._opname] = (func, *_cloned((args, kwargs)))
        return func(*args, **kwargs)


def _cloned(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_cloned(v) for v in value)
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A tiny Llama with one adapter, its first prompt step already run."""
    if c_compiler() is None or cpu_kernels() is None:
        missing_reference("no C compiler for the kernels")
    root = tmp_path_factory.mktemp("cpu-ops")
    base = save_tiny_model(root / "base", "llama", seed=3)
    make_peft_adapter(base, root / "a", r=4, targets=["q_proj", "v_proj", "down_proj"], seed=1)
    engine = Engine(base, EngineConfig(block_size=4, num_blocks=32, max_num_seqs=4))
    engine.add_adapter("a", root / "a")
    assert engine.adapters is not None
    assert engine.adapters.state.backend_name == "cpu"
    engine.add_request([5, 6, 7], SamplingParams(max_tokens=8, ignore_eos=True, adapter="a"))
    engine.add_request([9, 10], SamplingParams(max_tokens=8, ignore_eos=True))
    engine.step()  # the prompts (and the weights' packing)
    return engine


def _bf16_dot() -> bool:
    from openledger.serve.ops.linear_cpu import has_bf16_dot

    return has_bf16_dot()


def _expected_ops() -> list[str]:
    """Every op, less the bfloat16 int8 ones where the CPU lacks AVX512-BF16."""
    return sorted(n for n in OP_NAMES if _bf16_dot() or not n.endswith("_bf16"))


@pytest.fixture(scope="module")
def int8_engines(tmp_path_factory: pytest.TempPathFactory) -> list[Engine]:
    """The same tiny Llama quantised to int8, in float32 and bfloat16 arithmetic, their
    first prompt step already run."""
    if c_compiler() is None or cpu_kernels() is None:
        missing_reference("no C compiler for the kernels")
    base = save_tiny_model(tmp_path_factory.mktemp("cpu-ops-int8") / "base", "llama", seed=3)
    engines = []
    for compute in ("float32", "bfloat16"):
        config = EngineConfig(
            block_size=4,
            num_blocks=32,
            max_num_seqs=4,
            quantization="int8",
            quantized_compute=compute,
        )
        engine = Engine(base, config)
        engine.add_request([5, 6, 7], SamplingParams(max_tokens=8, ignore_eos=True))
        engine.step()
        engines.append(engine)
    return engines


@pytest.fixture(scope="module")
def decode_calls(engine: Engine, int8_engines: list[Engine]) -> dict[str, Call]:
    """The last call of each op in one decode step of each engine, and ``pack_linear``'s
    and ``pack_linear_int8``'s from a new weight."""
    with _Recorder() as recorder:
        outputs = engine.step()
        assert [len(o.token_ids) for o in outputs] == [2, 2]  # a decode step of both
        linear = next(m for m in engine.runner.model.modules() if hasattr(m, "packed"))
        linear.packed.invalidate()
        linear(torch.randn(2, linear.input_size))
        for int8_engine in int8_engines:
            assert [len(o.token_ids) for o in int8_engine.step()] == [2]
        q = torch.ones(30, 8, dtype=torch.int8)
        torch.ops.openledger.pack_linear_int8(q)
        if _bf16_dot():
            torch.ops.openledger.pack_linear_int8_bf16(q)
    return recorder.calls


def test_a_decode_step_runs_every_op(decode_calls: dict[str, Call]) -> None:
    assert sorted(decode_calls) == _expected_ops()
    assert set(INT8_OP_NAMES) <= set(OP_NAMES)


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_of_a_decode_step_passes_opcheck(decode_calls: dict[str, Call], name: str) -> None:
    if name not in _expected_ops():
        pytest.skip(f"{name}: this CPU has no AVX512-BF16 dot products")
    op, args, kwargs = decode_calls[name]
    result = torch.library.opcheck(op, args, kwargs)
    assert set(result.values()) == {"SUCCESS"}


def test_the_profiler_names_the_ops(engine: Engine) -> None:
    engine.add_request([11, 12, 13], SamplingParams(max_tokens=3, adapter="a"))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.step()
        engine.step()
    names = {event.key for event in prof.key_averages()}
    packing = ("pack_linear", *INT8_OP_NAMES)
    want = {f"openledger::{name}" for name in OP_NAMES if name not in packing}
    assert want <= names, sorted(want - names)


def test_fake_tensors_get_shapes_and_the_same_refusals() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    load_ops()
    with FakeTensorMode():
        x = torch.empty(5, 32)
        packed = torch.ops.openledger.pack_linear(torch.empty(50, 32))
        assert packed.shape[1:] == (32, packed.shape[2])
        assert torch.ops.openledger.linear(x, packed, 50, None).shape == (5, 50)
        assert torch.ops.openledger.silu_mul(torch.empty(5, 64)).shape == (5, 32)
        assert torch.ops.openledger.argmax_rows(x).dtype == torch.int64
        with pytest.raises(ValueError, match="x: the CPU kernels need a float32"):
            torch.ops.openledger.rms_norm(x.double(), torch.empty(32), 1e-6)
        with pytest.raises(ValueError, match="does not hold 80 outputs"):
            torch.ops.openledger.linear(x, packed, 80, None)


def test_ops_refuse_what_the_kernels_cannot_read(tmp_path: Path) -> None:
    if cpu_kernels() is None:
        missing_reference("no C compiler for the kernels")
    load_ops()
    heads = torch.randn(3, 2, 8)
    table = torch.randn(2, 10, 8)
    with pytest.raises(ValueError, match=r"positions must be in 0\.\.9"):
        torch.ops.openledger.rotary(heads, table, torch.tensor([0, 4, 10]))
    with pytest.raises(ValueError, match="even count"):
        torch.ops.openledger.silu_mul(torch.randn(2, 7))
    with pytest.raises(ValueError, match="residual"):
        torch.ops.openledger.add_rms_norm(torch.randn(2, 8), torch.randn(3, 8), torch.ones(8), 1e-6)
    # the LoRA kernel's rows: checked by the kernel on every call, before it writes
    a = torch.randn(2 * 8 + 2 * 12)  # A [2, 8], then B^T [2, 12] of one slice
    groups = torch.tensor([[0, 2, 0, 1]])
    slices = torch.tensor([[0, 2, 0, 12, 16]])
    out, x = torch.zeros(3, 12), torch.randn(3, 8)
    for offsets, rows in (([0, 2], [0, 0]), ([0, 2], [0, 3]), ([0, 1], [0, 1]), ([1, 2], [0, 1])):
        with pytest.raises(ValueError, match="one of the step's 3 tokens"):
            torch.ops.openledger.lora_apply(
                out, x, torch.tensor(offsets), torch.tensor(rows), [a], groups, slices
            )
    assert not out.any()
    torch.ops.openledger.lora_apply(
        out, x, torch.tensor([0, 2]), torch.tensor([2, 0]), [a], groups, slices
    )
    assert out[[0, 2]].abs().sum() > 0
    assert not out[1].any()
    with pytest.raises(ValueError, match="does not fit a buffer"):
        torch.ops.openledger.lora_apply(
            out, x, torch.tensor([0, 1]), torch.tensor([0]), [a[:-1]], groups, slices
        )
    weight = torch.randn(30, 16)
    packed = torch.ops.openledger.pack_linear(weight)
    got = torch.ops.openledger.linear(torch.randn(4, 16), packed, 30, None)
    assert got.shape == (4, 30)
    with pytest.raises(ValueError, match="bias"):
        torch.ops.openledger.linear(torch.randn(4, 16), packed, 30, torch.zeros(29))
