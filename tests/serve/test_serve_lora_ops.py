"""The torch LoRA path against the einsum reference, and weighted combinations."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tests.numerics import assert_within_rounding  # noqa: E402

from openledger.serve.ops.lora_reference import (  # noqa: E402
    lora_expand_reference,
    lora_shrink_reference,
)
from openledger.serve.ops.lora_step import LoraStep  # noqa: E402
from openledger.serve.ops.lora_torch import (  # noqa: E402
    LoraGroups,
    LoraSlice,
    LoraWeights,
    add_lora,
    combine_lora_weights,
    fuse_expand,
    stack_lora_weights,
)


def groups_of(indices: torch.Tensor) -> LoraGroups:
    """Tokens grouped by slot from each token's slot (-1 for none), as a step encodes them."""
    return LoraStep.from_token_slots(indices.tolist(), indices.device).groups


def random_weights(
    gen: torch.Generator, hidden: int, slice_sizes: list[int], ranks: list[int | None]
) -> LoraWeights:
    """An update targeting slices whose rank is not None, each with its own rank."""
    a_parts, slices, rank_at, col = [], [], 0, 0
    for size, rank in zip(slice_sizes, ranks, strict=True):
        if rank is not None:
            a_parts.append(torch.randn(rank, hidden, generator=gen))
            b = torch.randn(size, rank, generator=gen)
            slices.append(LoraSlice(rank_at, rank_at + rank, col, col + size, b))
            rank_at += rank
        col += size
    return LoraWeights(torch.cat(a_parts), tuple(slices))


def reference_delta(
    x: torch.Tensor, slots: list[LoraWeights | None], indices: torch.Tensor, out: int
) -> torch.Tensor:
    a_stack, b_stack = stack_lora_weights(slots, x.shape[1], out)
    return lora_expand_reference(lora_shrink_reference(x, a_stack, indices), b_stack, indices)


def delta_bound(
    x: torch.Tensor,
    slots: list[LoraWeights | None],
    indices: torch.Tensor,
    out: int,
    base: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """``|base| + |x| |A|^T |B|^T`` per element: the sizes whose rounding the update carries
    (its error is within ``gamma(hidden + rank + 1)`` of this, whatever the order)."""
    magnitudes = [
        None
        if w is None
        else LoraWeights(
            w.a.abs(),
            tuple(
                LoraSlice(s.rank_start, s.rank_end, s.col_start, s.col_end, s.b.abs())
                for s in w.slices
            ),
        )
        for w in slots
    ]
    delta = reference_delta(
        x.double().abs(), [m and m.to(x.device, torch.float64) for m in magnitudes], indices, out
    )
    return torch.as_tensor(base).double().abs() + delta


def max_rank_of(slots: list[LoraWeights | None]) -> int:
    """The largest rank of an update in ``slots`` (the shrink's sum, then the expand's)."""
    return max((s.rank_end - s.rank_start for w in slots if w for s in w.slices), default=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden", [16, 48])
@pytest.mark.parametrize("num_slots", [1, 3, 8])
@pytest.mark.parametrize("max_rank", [1, 8, 16])
def test_add_lora_matches_reference(
    dtype: torch.dtype, hidden: int, num_slots: int, max_rank: int
) -> None:
    gen = torch.Generator().manual_seed(hidden * 100 + num_slots * 10 + max_rank)
    sizes = [hidden, hidden // 4, hidden // 4]  # q|k|v-like fused slices
    slots: list[LoraWeights | None] = []
    for slot in range(num_slots):
        ranks = [1 + (slot + i) % max_rank if (slot + i) % 3 else None for i in range(3)]
        ranks[0] = ranks[0] or max_rank  # every adapter targets at least one slice
        slots.append(random_weights(gen, hidden, sizes, ranks))
    if num_slots > 2:
        slots[1] = None  # an empty slot in the middle
    indices = torch.randint(-1, num_slots, (23,), generator=gen)
    indices[3:9] = 0  # one contiguous run (prefill-like), the rest scattered
    x = torch.randn(23, hidden, generator=gen)
    base = torch.randn(23, sum(sizes), generator=gen)
    out = base.clone().to(dtype)
    add_lora(
        out,
        x.to(dtype),
        groups_of(indices),
        [None if w is None else w.to(torch.device("cpu"), dtype) for w in slots],
    )
    live = torch.tensor([i >= 0 and slots[i] is not None for i in indices.tolist()])
    masked = torch.where(live, indices, torch.full_like(indices, -1))
    expected = base + reference_delta(x, slots, masked, sum(sizes))
    # the shrink over hidden, the expand over the rank, the add; and in float16 the
    # rounding of x, A, B, base and the shrink's result to float16 (float32 reference)
    terms = hidden + max_rank_of(slots) + (1 if dtype == torch.float32 else 6)
    bound = delta_bound(x, slots, masked, sum(sizes), base)
    assert_within_rounding(out, expected, bound=bound, dtype=dtype, terms=terms)
    assert torch.equal(out[indices == -1].float(), base[indices == -1].to(dtype).float())


def test_groups_use_views_for_contiguous_runs() -> None:
    groups = groups_of(torch.tensor([2, 2, 2, -1, 0, 1, 0]))
    by_slot = dict(groups.groups)
    assert by_slot[2] == slice(0, 3)
    assert torch.equal(by_slot[0], torch.tensor([4, 6]))
    assert by_slot[1] == slice(5, 6)
    assert groups_of(torch.tensor([-1, -1])).empty


def test_combination_is_the_weighted_sum_of_updates() -> None:
    gen = torch.Generator().manual_seed(5)
    first = random_weights(gen, 12, [12, 4], [3, None])
    second = random_weights(gen, 12, [12, 4], [5, 2])
    mixed = combine_lora_weights([(first, 0.7), (second, -0.3)])
    assert mixed.a.shape == (3 + 5 + 2, 12)
    x = torch.randn(6, 12, generator=gen)
    got, one, two = torch.zeros(6, 16), torch.zeros(6, 16), torch.zeros(6, 16)
    groups = groups_of(torch.zeros(6, dtype=torch.int64))
    add_lora(got, x, groups, [mixed])
    add_lora(one, x, groups, [first])
    add_lora(two, x, groups, [second])
    # the mix scales B by its coefficient (one more rounding) and sums both updates at once
    zeros = torch.zeros(6, dtype=torch.int64)
    bound = 0.7 * delta_bound(x, [first], zeros, 16) + 0.3 * delta_bound(x, [second], zeros, 16)
    assert_within_rounding(got, 0.7 * one - 0.3 * two, bound=bound, dtype=torch.float32, terms=20)
    with pytest.raises(ValueError, match="at least one"):
        combine_lora_weights([])


def test_slot_without_weights_for_this_projection_is_skipped() -> None:
    out = torch.ones(2, 4)
    add_lora(out, torch.ones(2, 3), groups_of(torch.tensor([0, 0])), [None])
    assert torch.equal(out, torch.ones(2, 4))


def test_groups_from_sequences_merge_adjacent_runs() -> None:
    groups = LoraStep.from_sequences([1, 1, -1, 0, 1], [3, 2, 4, 1, 2], torch.device("cpu")).groups
    by_slot = dict(groups.groups)
    assert torch.equal(by_slot[1], torch.tensor([0, 1, 2, 3, 4, 10, 11]))
    assert by_slot[0] == slice(9, 10)
    indices = torch.tensor([1] * 5 + [-1] * 4 + [0] + [1] * 2)
    from_tokens = dict(groups_of(indices).groups)
    assert torch.equal(from_tokens[1], by_slot[1])
    assert LoraStep.from_sequences([-1], [5], torch.device("cpu")).groups.empty


def test_fused_expand_gives_the_same_update() -> None:
    gen = torch.Generator().manual_seed(9)
    weights = random_weights(gen, 16, [16, 4, 4], [3, None, 5])
    fused = fuse_expand(weights)
    assert len(fused.slices) == 1
    assert (fused.slices[0].col_start, fused.slices[0].col_end) == (0, 24)
    x = torch.randn(7, 16, generator=gen)
    groups = groups_of(torch.tensor([0, -1, 0, 0, -1, 0, 0]))
    got, want = torch.zeros(7, 24), torch.zeros(7, 24)
    add_lora(got, x, groups, [fused])
    add_lora(want, x, groups, [weights])
    bound = delta_bound(x, [weights], torch.tensor([0, -1, 0, 0, -1, 0, 0]), 24)
    assert_within_rounding(got, want, bound=bound, dtype=torch.float32, terms=16 + 5 + 1)
    single = random_weights(gen, 16, [16], [2])
    assert fuse_expand(single) is single
