"""The derived tolerances of tests/numerics.py hold rounding differences and nothing more."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.numerics import (
    abs_products,
    assert_rows_close,
    assert_within,
    assert_within_rounding,
    gamma,
    unit_roundoff,
)


def in_other_orders(x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
    """``x @ w.T`` in float32 summed forwards, backwards and in chunks of 7."""
    forwards = torch.zeros(x.shape[0], w.shape[0])
    backwards = torch.zeros_like(forwards)
    for k in range(x.shape[1]):
        forwards += x[:, k : k + 1] * w[:, k]
        backwards += x[:, -k - 1 : x.shape[1] - k] * w[:, -k - 1]
    chunks = sum(x[:, k : k + 7] @ w[:, k : k + 7].T for k in range(0, x.shape[1], 7))
    return [forwards, backwards, chunks, x @ w.T]


@settings(max_examples=25, deadline=None)
@given(depth=st.integers(1, 300), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_sums_in_any_order_are_within_the_bound(depth: int, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, depth, generator=gen) * scale
    w = torch.randn(5, depth, generator=gen)
    exact = x.double() @ w.double().T
    size = abs_products(x, w)
    orders = in_other_orders(x, w)
    for got in orders:
        assert_within_rounding(
            got, exact, bound=size, dtype=x.dtype, terms=depth, both_rounded=False
        )
    for got in orders[1:]:
        assert_within_rounding(got, orders[0], bound=size, dtype=x.dtype, terms=depth)


def test_an_error_past_rounding_is_caught() -> None:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 256, generator=gen), torch.randn(6, 256, generator=gen)
    want, size = x @ w.T, abs_products(x, w)
    wrong = want.clone()
    wrong[2, 3] += 4 * gamma(256, torch.float32) * float(size[2, 3])  # twice the allowance
    with pytest.raises(AssertionError, match="1 of 24 elements exceed"):
        assert_within_rounding(wrong, want, bound=size, dtype=torch.float32, terms=256)
    # a dropped term (one product of 256) is far outside the bound
    dropped = want - x[:, :1] * w[:, 0]
    with pytest.raises(AssertionError, match="exceed"):
        assert_within_rounding(dropped, want, bound=size, dtype=torch.float32, terms=256)


def test_rows_are_compared_one_by_one() -> None:
    gen = torch.Generator().manual_seed(1)
    want = torch.randn(10, 1000, generator=gen)
    assert_rows_close(want * (1 + unit_roundoff(torch.float32)), want, dtype=torch.float32, terms=1)
    wrong = want.clone()
    wrong[7] *= 1 + 1e-3  # one row off by 0.1%: the other nine cannot hide it
    with pytest.raises(AssertionError, match=r"1 of 10 rows.*row 7"):
        assert_rows_close(wrong, want, dtype=torch.float32, terms=1000)
    with pytest.raises(AssertionError, match="rows"):
        assert_rows_close(want[[1, 0, *range(2, 10)]], want, dtype=torch.float32, terms=1000)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_rows_close(want[:9], want, dtype=torch.float32, terms=1)


def test_bounds_scale_with_the_type_and_stop_where_they_no_longer_hold() -> None:
    assert gamma(100, torch.float16) > 1000 * gamma(100, torch.float32)
    assert gamma(1, torch.float32) == pytest.approx(2.0**-24, rel=1e-6)
    with pytest.raises(ValueError, match="no longer holds"):
        gamma(2048, torch.float16)
    with pytest.raises(AssertionError, match="exceed"):
        assert_within(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]), 0.1)
