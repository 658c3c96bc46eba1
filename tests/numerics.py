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

from typing import Any

import torch

__all__ = [
    "abs_products",
    "assert_logits_close",
    "assert_rows_close",
    "assert_within",
    "assert_within_rounding",
    "attention_bound",
    "backward_terms",
    "forward_terms",
    "gamma",
    "unit_roundoff",
]


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


def attention_bound(
    q: torch.Tensor, abs_out: torch.Tensor, k_abs_max: float, scale: float
) -> torch.Tensor:
    """What the rounding of ``softmax(scale q k^T) v`` is proportional to, per element.

    A score's rounding (``gamma_dim`` of ``scale |q|.|k|``) becomes a relative error of its
    weight through ``exp``, the normalisation doubles it, and the weighted sum of values
    adds its own: the error is within ``gamma(dim + 2 keys + 2)`` of
    ``sum_j p_j |v_j| (1 + 2 scale max_j |q|.|k_j|)``.

    Args:
        q: Queries ``[..., heads, dim]``.
        abs_out: The same attention over ``|v|`` (``sum_j p_j |v_j|``), shaped as the output.
        k_abs_max: The largest ``|k|`` element any query reads.
        scale: The score scale.
    """
    reach = scale * q.double().abs().sum(-1, keepdim=True) * k_abs_max
    return abs_out.double() * (1 + 2 * reach)


def forward_terms(config: Any, tokens: int) -> int:
    """The longest chain of sums in a transformer's forward pass: per layer the hidden, MLP
    and attention (sequence) sums, and a pooling over the tokens.

    Args:
        config: A transformers config (``hidden_size``, ``intermediate_size``,
            ``num_hidden_layers``).
        tokens: The longest sequence.
    """
    per_layer = config.hidden_size + config.intermediate_size + tokens
    return config.num_hidden_layers * per_layer + tokens


def backward_terms(config: Any, tokens: int, *, projected: bool = False) -> int:
    """The longest chain of sums behind a decoder's LoRA gradient: the forward pass, the
    loss over the vocabulary, the same sums back (:func:`forward_terms` bounds both, as the
    backward pass mirrors it), and, when ``projected``, the projection of the widest side.
    """
    total = config.vocab_size + forward_terms(config, tokens)
    return total + (max(config.hidden_size, config.intermediate_size) if projected else 0)


def assert_logits_close(
    got: torch.Tensor, want: torch.Tensor, config: Any, *, msg: str = ""
) -> None:
    """Two float32 forward passes' logits ``[..., tokens, vocab]``: each token's row within
    the rounding bound of the pass (:func:`forward_terms`) and the head over the hidden size."""
    tokens = got.shape[-2]
    terms = forward_terms(config, tokens) + config.hidden_size
    flat_got, flat_want = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
    assert_rows_close(flat_got, flat_want, dtype=torch.float32, terms=terms, msg=msg)


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
    assert_within(got, want, limit, msg=f"{msg}(gamma_{terms} in {dtype}) ")


def assert_within(
    got: torch.Tensor, want: torch.Tensor, limit: torch.Tensor | float, *, msg: str = ""
) -> None:
    """``|got - want| <= limit`` element by element (``limit`` broadcast), for bounds
    composed from several of the above (e.g. float32 sums, then a float16 store)."""
    error = (got.double() - want.double()).abs()
    excess = (error - torch.as_tensor(limit, dtype=torch.float64)).reshape(-1)
    if bool((excess > 0).any()):
        worst = int(torch.argmax(excess))
        raise AssertionError(
            f"{msg}{int((excess > 0).sum())} of {error.numel()} elements exceed their bound; "
            f"worst at flat index {worst}: error {float(error.reshape(-1)[worst]):.3e} exceeds "
            f"it by {float(excess[worst]):.3e}"
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
