"""Triton SGMV/BGMV kernels against the einsum reference (TRITON_INTERPRET=1 on CPU).

bf16 is left to benchmarks/gpu_check.py: the interpreter computes it wrongly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from tests.numerics import assert_within, gamma, unit_roundoff  # noqa: E402

from openledger.serve.ops.lora_reference import (  # noqa: E402
    lora_expand_reference,
    lora_shrink_reference,
)
from openledger.serve.ops.lora_step import LoraStep  # noqa: E402
from openledger.serve.ops.lora_triton import (  # noqa: E402
    LoraSegments,
    bgmv_expand,
    bgmv_shrink,
    sgmv_expand,
    sgmv_shrink,
)


def segments_of(indices: torch.Tensor) -> LoraSegments:
    """Runs of equal slots from each token's slot (-1 for none), as a step encodes them."""
    return LoraStep.from_token_slots(indices.tolist(), indices.device).lora_segments


CASES = [  # (max rank, slots, hidden, out features)
    (1, 1, 16, 24),
    (8, 3, 64, 40),
    (16, 8, 80, 72),
    (32, 4, 48, 33),
]


def make_case(max_rank: int, num_slots: int, hidden: int, out: int, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(max_rank * 1000 + num_slots * 10 + hidden)
    ranks = torch.tensor([1 + (7 * s) % max_rank for s in range(num_slots)], dtype=torch.int32)
    ranks[-1] = max_rank
    a = torch.zeros(num_slots, max_rank, hidden)
    b = torch.zeros(num_slots, out, max_rank)
    for slot, rank in enumerate(ranks.tolist()):
        a[slot, :rank] = torch.randn(rank, hidden, generator=gen) / hidden**0.5
        b[slot, :, :rank] = torch.randn(out, rank, generator=gen)
    # prefill-like runs of one slot, a run without adapter, then scattered decode tokens
    runs = [torch.full((n,), s) for n, s in [(5, 0), (19, num_slots - 1), (3, -1)]]
    scattered = torch.randint(-1, num_slots, (9,), generator=gen)
    indices = torch.cat([*runs, scattered]).to(torch.int64)
    x = torch.randn(indices.shape[0], hidden, generator=gen)
    base = torch.randn(indices.shape[0], out, generator=gen)
    return {"x": x.to(dtype), "a": a.to(dtype), "b": b.to(dtype), "ranks": ranks,
            "indices": indices, "base": base.to(dtype)}  # fmt: skip


def expected(case: dict, magnitude: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference shrink and output in float64 from the case's inputs; with
    ``magnitude``, the same over absolute values (what their rounding is proportional to)."""
    x, a, b, base = (case[k].double() for k in ("x", "a", "b", "base"))
    if magnitude:
        x, a, b, base = x.abs(), a.abs(), b.abs(), base.abs()
    y = lora_shrink_reference(x, a, case["indices"])
    return y, base + lora_expand_reference(y, b, case["indices"])


def assert_kernel_close(case: dict, got_y: torch.Tensor | None, got: torch.Tensor) -> None:
    """The kernels sum in float32 and store the shrink rows and the output in the case's
    type: within ``gamma_32(terms)`` of the magnitudes plus one rounding per store."""
    dtype, (hidden, rank) = case["x"].dtype, (case["a"].shape[2], case["a"].shape[1])
    (want_y, want), (size_y, size) = expected(case), expected(case, magnitude=True)
    store = unit_roundoff(dtype)
    if got_y is not None:
        assert_within(got_y, want_y, (gamma(hidden, torch.float32) + store) * size_y)
    limit = (gamma(hidden + rank + 1, torch.float32) + 2 * store) * size
    assert_within(got, want, limit)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("max_rank", "num_slots", "hidden", "out"), CASES)
def test_sgmv_matches_reference(
    dtype: torch.dtype, max_rank: int, num_slots: int, hidden: int, out: int
) -> None:
    case = make_case(max_rank, num_slots, hidden, out, dtype)
    segments = segments_of(case["indices"])
    y = sgmv_shrink(case["x"], case["a"], case["ranks"], segments)
    got = case["base"].clone()
    sgmv_expand(y, case["b"], case["ranks"], segments, got)
    assert_kernel_close(case, y, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("max_rank", "num_slots", "hidden", "out"), CASES)
def test_bgmv_matches_reference(
    dtype: torch.dtype, max_rank: int, num_slots: int, hidden: int, out: int
) -> None:
    case = make_case(max_rank, num_slots, hidden, out, dtype)
    y = bgmv_shrink(case["x"], case["a"], case["ranks"], case["indices"])
    got = case["base"].clone()
    bgmv_expand(y, case["b"], case["ranks"], case["indices"], got)
    assert_kernel_close(case, y, got)


def test_expand_into_a_column_slice_of_a_fused_output() -> None:
    case = make_case(8, 3, 64, 40, torch.float32)
    fused = torch.zeros(case["x"].shape[0], 100)
    fused[:, 30:70] = case["base"]
    y = sgmv_shrink(case["x"], case["a"], case["ranks"], segments_of(case["indices"]))
    sgmv_expand(y, case["b"], case["ranks"], segments_of(case["indices"]), fused[:, 30:70])
    assert_kernel_close(case, None, fused[:, 30:70])
    assert not fused[:, :30].any()
    assert not fused[:, 70:].any()


def test_segments_are_runs_of_equal_slots() -> None:
    segments = segments_of(torch.tensor([3, 3, -1, 3, 0, 0, 1, -1]))
    assert segments.starts.tolist() == [0, 3, 4, 6]
    assert segments.lengths.tolist() == [2, 1, 2, 1]
    assert segments.slots.tolist() == [3, 3, 0, 1]
    assert segments.max_length == 2
    assert segments_of(torch.tensor([-1, -1])).max_length == 0


def test_wrappers_refuse_bad_inputs() -> None:
    case = make_case(8, 3, 64, 40, torch.float32)
    segments = segments_of(case["indices"])
    with pytest.raises(ValueError, match="dtype"):
        sgmv_shrink(case["x"].half(), case["a"], case["ranks"], segments)
    with pytest.raises(ValueError, match="contiguous"):
        sgmv_shrink(case["x"], case["a"].mT.contiguous().mT, case["ranks"], segments)
    with pytest.raises(ValueError, match="ranks must be int32"):
        bgmv_shrink(case["x"], case["a"], case["ranks"].long(), case["indices"])
    with pytest.raises(ValueError, match="indices"):
        bgmv_shrink(case["x"], case["a"], case["ranks"], case["indices"][:-1])
    with pytest.raises(ValueError, match="unit column stride"):
        bgmv_expand(torch.zeros(36, 8), case["b"], case["ranks"], case["indices"],
                    torch.zeros(40, 36).T)  # fmt: skip


def test_segments_from_sequences_match_the_token_runs() -> None:
    seq_slots, lengths = [2, 2, -1, 0, 0, 1, 2], [3, 1, 2, 4, 0, 1, 2]
    host = LoraStep.from_sequences(seq_slots, lengths, torch.device("cpu")).lora_segments
    tokens = torch.tensor([s for s, n in zip(seq_slots, lengths, strict=True) for _ in range(n)])
    want = segments_of(tokens)
    for field in ("starts", "lengths", "slots"):
        assert getattr(host, field).tolist() == getattr(want, field).tolist()
    assert host.max_length == want.max_length == 4


@pytest.mark.parametrize(
    ("seq_slots", "lengths"),
    [
        ([0, 3, -1, 3, 1], [5, 3, 2, 4, 17]),  # prefill: SGMV over runs
        ([3, 0, -1, 1, 3, 2], [1] * 6),  # decode: BGMV per token
    ],
)
def test_triton_projection_matches_the_torch_one(seq_slots: list[int], lengths: list[int]) -> None:
    from tests.serve.test_serve_lora_layer import (
        HIDDEN,
        SIZES,
        kernel_or_torch,
        layer_output,
        make_slots,
    )

    from openledger.serve.layers.lora import LoraState

    weights = make_slots(4, 4)
    shapes = {"proj": (HIDDEN, sum(SIZES))}
    cpu = torch.device("cpu")
    triton_state = LoraState(shapes, 4, cpu, backend="triton")
    triton_run = layer_output(triton_state, weights, seq_slots, lengths)
    for kernel in (False, True):
        torch_state = LoraState(shapes, 4, cpu, backend=kernel_or_torch(kernel))
        torch_run = layer_output(torch_state, weights, seq_slots, lengths)
        assert_within(triton_run.out, torch_run.out, triton_run.limit + torch_run.limit)


def test_slot_stack_grows_and_empties() -> None:
    from tests.serve.test_serve_lora_ops import random_weights

    from openledger.serve.ops.lora_stack import SlotStack

    gen = torch.Generator().manual_seed(2)
    stack = SlotStack(3, 8, 12, torch.float32, torch.device("cpu"))
    small = random_weights(gen, 8, [8, 4], [3, None])
    stack.install(0, small)
    assert stack.max_rank == 16
    assert stack.ranks.tolist() == [3, 0, 0]
    large = random_weights(gen, 8, [8, 4], [9, 11])
    stack.install(2, large)
    assert stack.max_rank == 32
    assert stack.ranks.tolist() == [3, 0, 20]
    torch.testing.assert_close(stack.a[0, :3], small.a)  # kept through the growth
    torch.testing.assert_close(stack.b[2, 8:12, 9:20], large.slices[1].b)
    stack.install(2, None)
    assert stack.ranks.tolist() == [3, 0, 0]


def test_engine_tokens_are_identical_on_the_triton_path(tmp_path: Path) -> None:
    from tests.serve.serve_lora_factory import make_peft_adapter

    from openledger.models import save_tiny_model
    from openledger.serve import Engine, EngineConfig, SamplingParams

    base = save_tiny_model(tmp_path / "base", "llama", seed=4)
    adapters = {
        "all": make_peft_adapter(base, tmp_path / "all", r=4, seed=1, targets=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        "qv": make_peft_adapter(base, tmp_path / "qv", r=6, targets=["q_proj", "v_proj"], seed=2),
    }  # fmt: skip
    prompts = [[5, 9, 33, 7, 120], [44, 2, 9], [5, 9, 33, 7, 120, 64, 1]]
    choices = ["all", "qv", {"all": 0.5, "qv": -1.0}]
    params = [SamplingParams(max_tokens=4, min_tokens=4, adapter=c) for c in choices]
    tokens = {}
    for backend in ("torch", "triton"):
        config = EngineConfig(max_num_seqs=4, block_size=4, num_blocks=32, lora_backend=backend)
        engine = Engine(base, config)
        for name, folder in adapters.items():
            engine.add_adapter(name, folder)
        assert engine.adapters is not None
        assert engine.adapters.state.backend_name == backend
        tokens[backend] = [out.token_ids for out in engine.generate(prompts, params)]
    assert tokens["triton"] == tokens["torch"]


def test_triton_backend_takes_the_batched_bmm_on_steady_decode_steps() -> None:
    from tests.serve.test_serve_lora_layer import HIDDEN, SIZES, lora_limit, make_slots

    from openledger.serve.layers.lora import LoraProjection, LoraState
    from openledger.serve.ops.lora_backends import TritonLoraBackend
    from openledger.serve.ops.lora_torch import fuse_expand

    weights = make_slots(5, 4)
    state = LoraState({"proj": (HIDDEN, sum(SIZES))}, 4, torch.device("cpu"), backend="triton")
    assert isinstance(state.backend, TritonLoraBackend)
    backend = state.backend.torch
    for slot, w in enumerate(weights):
        state.install(slot, None if w is None else {"proj": fuse_expand(w)})
    projection = LoraProjection(state, "proj")
    x = torch.randn(5, HIDDEN)
    decode, other, prefill = (
        ([0, 3, 3, 1, -1], [1] * 5),
        ([0, 1, 1, 1, 1], [1] * 5),
        ([0, 3, 1], [2, 2, 1]),  # the same adapters as the decode steps
    )
    used, outputs = [], []
    for seq_slots, lengths in [decode] * 4 + [prefill, decode, other, other]:
        state.set_batch(seq_slots, lengths)
        out = torch.zeros(5, sum(SIZES))
        projection.apply(out, x)
        used.append(backend.stacked("proj"))
        outputs.append(out)
    # BGMV for the first two decode steps, the stacked bmm from the third on; a prefill with
    # the same adapters keeps the stacks for the next decode step; a new set frees them
    assert used == [False, False, True, True, True, True, False, False]
    limit = lora_limit(x, weights, torch.tensor(decode[0]))
    for out in outputs[1:4] + outputs[5:6]:
        assert_within(out, outputs[0], 2 * limit)  # two float32 paths, each within limit
