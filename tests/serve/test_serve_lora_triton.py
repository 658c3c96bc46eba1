"""Triton SGMV/BGMV kernels against the einsum reference (TRITON_INTERPRET=1 on CPU).

bf16 is left to benchmarks/gpu_check.py: the interpreter computes it wrongly.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from openledger.serve.ops.lora_reference import (  # noqa: E402
    lora_expand_reference,
    lora_shrink_reference,
)
from openledger.serve.ops.lora_triton import (  # noqa: E402
    bgmv_expand,
    bgmv_shrink,
    lora_segments,
    sgmv_expand,
    sgmv_shrink,
)

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


def expected(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    y = lora_shrink_reference(case["x"], case["a"], case["indices"])
    out = case["base"].float() + lora_expand_reference(y, case["b"], case["indices"])
    return y, out


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("max_rank", "num_slots", "hidden", "out"), CASES)
def test_sgmv_matches_reference(
    dtype: torch.dtype, max_rank: int, num_slots: int, hidden: int, out: int
) -> None:
    case = make_case(max_rank, num_slots, hidden, out, dtype)
    segments = lora_segments(case["indices"])
    y = sgmv_shrink(case["x"], case["a"], case["ranks"], segments)
    want_y, want_out = expected(case)
    torch.testing.assert_close(y, want_y, **tolerance(dtype))
    got = case["base"].clone()
    sgmv_expand(y, case["b"], case["ranks"], segments, got)
    torch.testing.assert_close(got.float(), want_out, **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("max_rank", "num_slots", "hidden", "out"), CASES)
def test_bgmv_matches_reference(
    dtype: torch.dtype, max_rank: int, num_slots: int, hidden: int, out: int
) -> None:
    case = make_case(max_rank, num_slots, hidden, out, dtype)
    y = bgmv_shrink(case["x"], case["a"], case["ranks"], case["indices"])
    want_y, want_out = expected(case)
    torch.testing.assert_close(y, want_y, **tolerance(dtype))
    got = case["base"].clone()
    bgmv_expand(y, case["b"], case["ranks"], case["indices"], got)
    torch.testing.assert_close(got.float(), want_out, **tolerance(dtype))


def test_expand_into_a_column_slice_of_a_fused_output() -> None:
    case = make_case(8, 3, 64, 40, torch.float32)
    fused = torch.zeros(case["x"].shape[0], 100)
    fused[:, 30:70] = case["base"]
    y = sgmv_shrink(case["x"], case["a"], case["ranks"], lora_segments(case["indices"]))
    sgmv_expand(y, case["b"], case["ranks"], lora_segments(case["indices"]), fused[:, 30:70])
    torch.testing.assert_close(fused[:, 30:70], expected(case)[1], rtol=1e-4, atol=1e-4)
    assert not fused[:, :30].any()
    assert not fused[:, 70:].any()


def test_segments_are_runs_of_equal_slots() -> None:
    segments = lora_segments(torch.tensor([3, 3, -1, 3, 0, 0, 1, -1]))
    assert segments.starts.tolist() == [0, 3, 4, 6]
    assert segments.lengths.tolist() == [2, 1, 2, 1]
    assert segments.slots.tolist() == [3, 3, 0, 1]
    assert segments.max_length == 2
    assert lora_segments(torch.tensor([-1, -1])).max_length == 0


def test_wrappers_refuse_bad_inputs() -> None:
    case = make_case(8, 3, 64, 40, torch.float32)
    segments = lora_segments(case["indices"])
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
