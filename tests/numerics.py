"""Tolerances derived from what is compared, never tuned to one machine.

Two results of the same float computation differ by rounding only, and how much depends
on the dtype, on how many terms each reduction sums, and on the size of those terms, not
on the CPU. CPUs differ in summation order (AVX2 against AVX-512 lanes, oneDNN and MKL
blocking, our kernels' panels) and in fused multiply-adds, so a tolerance must cover
every order the bound allows. The classic bound (Higham, *Accuracy and Stability of
Numerical Algorithms*, 3.1) for a sum or dot product of ``n`` terms in a type with unit
roundoff ``u`` is::

    |fl(sum) - sum| <= gamma_n * sum |term_i|,    gamma_n = n u / (1 - n u)

whatever the order. When both sides are computed in the same type each may be off by that
much, so the helpers allow twice the bound; a float64 reference counts as exact.

* :func:`assert_within_rounding` checks each element against its own bound (for matmuls,
  :func:`abs_products` gives ``sum |x_k w_k|`` per output element);
* :func:`assert_rows_close` compares whole rows norm-wise, for results of many chained
  reductions (a forward and backward pass) where single elements may cancel to almost
  nothing while their rounding does not.
"""

from __future__ import annotations

import torch

__all__ = ["abs_products", "assert_rows_close", "assert_within_rounding", "gamma", "unit_roundoff"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon: the largest relative error of one rounding."""
    return float(torch.finfo(dtype).eps) / 2


def gamma(terms: int, dtype: torch.dtype) -> float:
    """``gamma_n``: the relative error bound of a sum of ``terms`` terms in ``dtype``."""
    nu = max(terms, 1) * unit_roundoff(dtype)
    if nu >= 0.5:
        raise ValueError(f"{terms} terms in {dtype}: the bound no longer holds (n u >= 1/2)")
    return nu / (1 - nu)


def abs_products(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``|x| @ |weight|^T`` in float64: the sum of |products| behind each element of
    ``x @ weight.T`` (what its rounding error is proportional to)."""
    return x.double().abs() @ weight.double().abs().T


def _floor(dtype: torch.dtype, terms: int) -> float:
    # NOTE: results near zero can come from subnormal products, whose rounding is absolute.
    return float(torch.finfo(dtype).tiny) * max(terms, 1)


def assert_within_rounding(
    got: torch.Tensor,
    want: torch.Tensor,
    *,
    bound: torch.Tensor | float,
    dtype: torch.dtype,
    terms: int,
    both_rounded: bool = True,
    msg: str = "",
) -> None:
    """Each element within ``gamma(terms) * bound`` of the reference.

    Args:
        got: The fast path's result.
        want: The reference.
        bound: ``sum |term|`` behind each element (a tensor broadcast to ``got``), or one
            number for all.
        dtype: The type the sums were computed in.
        terms: The longest chain of roundings behind an element (terms summed, plus one
            for each further operation applied).
        both_rounded: ``want`` was also computed in ``dtype`` (twice the bound); False for
            a float64 reference.
        msg: Said when it fails.
    """
    allowed = (2 if both_rounded else 1) * gamma(terms, dtype)
    limit = allowed * torch.as_tensor(bound, dtype=torch.float64) + _floor(dtype, terms)
    error = (got.double() - want.double()).abs()
    bad = error > limit
    if bad.any():
        excess = (error - limit).reshape(-1)
        worst = int(torch.argmax(excess))
        found, over = float(error.reshape(-1)[worst]), float(excess[worst])
        raise AssertionError(
            f"{msg}{int(bad.sum())} of {error.numel()} elements exceed their rounding bound "
            f"(gamma_{terms} in {dtype}); worst at flat index {worst}: error "
            f"{found:.3e} exceeds its bound by {over:.3e}"
        )


def assert_rows_close(
    got: torch.Tensor,
    want: torch.Tensor,
    *,
    dtype: torch.dtype,
    terms: int,
    both_rounded: bool = True,
    msg: str = "",
) -> None:
    """Each row within ``gamma(terms)`` of the reference, relative to the row's norm.

    For results of long chains of reductions (gradients through a network), where the
    bound per element is out of reach but the chain's length is known: ``terms`` is the
    number of roundings along it (e.g. layers x (hidden + intermediate + sequence)).
    Rows are compared one by one, so a single wrong row is never hidden by the rest.
    """
    if got.shape != want.shape:
        raise AssertionError(f"{msg}shapes differ: {tuple(got.shape)} != {tuple(want.shape)}")
    allowed = (2 if both_rounded else 1) * gamma(terms, dtype)
    flat_got, flat_want = (
        got.double().reshape(got.shape[0], -1),
        want.double().reshape(want.shape[0], -1),
    )
    errors = (flat_got - flat_want).norm(dim=1)
    limits = allowed * flat_want.norm(dim=1) + _floor(dtype, terms)
    bad = (errors > limits).nonzero().flatten().tolist()
    if bad:
        row = bad[0]
        raise AssertionError(
            f"{msg}{len(bad)} of {len(errors)} rows exceed gamma_{terms} in {dtype} norm-wise; "
            f"row {row}: |error| {float(errors[row]):.3e} > {float(limits[row]):.3e}"
        )
