"""Influence of training examples on a query, from per-example LoRA gradients.

Notation: ``G`` holds one row per training example (``n x D``), split into LoRA layers
``G_l`` (``n x d_l``, see :class:`~openledger.attribution.gradients.GradientLayout`);
``q`` is the query's gradient. A score is positive when up-weighting the example lowers the
query's loss (it helped produce the completion), negative when it raised it.

- ``exact``: ``score_i = sum_l q_l^T H_l^-1 g_il`` with the damped empirical Fisher of each
  LoRA layer ``H_l = G_l^T G_l / n + lambda_l I``, solved exactly: a Cholesky solve of the
  ``d_l x d_l`` system when ``d_l <= n``, else the Woodbury form
  ``H_l^-1 = (I - G_l^T (n lambda_l I + G_l G_l^T)^-1 G_l) / lambda_l``.
- ``datainf`` (Kwon et al., 2024): the inverse of the mean of rank-one terms is replaced by
  the mean of their inverses, which has a closed form::

      H_l^-1 q_l ~= (q_l - (1/n) sum_i g_il (g_il^T q_l) / (lambda_l + |g_il|^2)) / lambda_l

- ``tracin`` (Pruthi et al., 2020): ``sum_c eta_c q_c^T g_ic`` over checkpoints ``c`` with
  learning rate ``eta_c`` (one checkpoint: the final adapter).
- ``gradcos`` (as in LESS): cosine between ``q`` and ``g_i`` over all layers.

Products with the (float32, possibly memory-mapped) gradient rows are computed in float32
and accumulated per layer in float64; the small per-layer systems are solved in float64.
16-bit rows (an index's ``storage_dtype``) are widened to float32 a block of rows at a
time before each product, so they too are accumulated in float32.

Methods other than ``tracin`` use the last checkpoint's gradients (the final adapter unless
checkpoints were given). The damping is DataInf's ``lambda_l = 0.1 * mean_i |g_il|^2 / d_l``
(scale settable) for both ``exact`` and ``datainf``, so the two estimate the same quantity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from openledger.attribution.gradients import GradientLayout

if TYPE_CHECKING:
    import torch

__all__ = [
    "METHODS",
    "DataInfScorer",
    "ExactScorer",
    "GradCosScorer",
    "Method",
    "Scorer",
    "TracInScorer",
    "layer_damping",
    "make_scorer",
]

Method = Literal["exact", "datainf", "tracin", "gradcos"]
"""An influence method: ``exact`` (damped per-layer inverse, the reference), ``datainf``
(closed form), ``tracin`` (learning-rate-weighted checkpoint dot products) or ``gradcos``
(cosine of gradients)."""
METHODS: tuple[str, ...] = get_args(Method)
"""Every :data:`Method` name, in the order above."""


class Scorer(Protocol):
    """Scores every training example against a query's gradients (one per checkpoint).

    A query is a ``[D]`` row, or ``[Q, D]`` rows of ``Q`` queries scored at once (one
    matrix product against the index instead of ``Q``); the scores are then ``[Q, n]``.
    """

    def scores(self, queries: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return one float64 score per training example (per query, for ``[Q, D]``)."""
        ...


def layer_damping(grads: torch.Tensor, scale: float = 0.1) -> float:
    """Return DataInf's damping ``scale * mean_i |g_i|^2 / d`` of one layer's gradients."""
    count, width = grads.shape
    value = float(grads.double().pow(2).sum()) / (count * width)
    return scale * value if value > 0 else scale


class ExactScorer:
    """``exact``: damped per-layer Fisher inverse, solved exactly (the reference method).

    Args:
        grads: Training gradients, ``n x D``.
        layout: Layer slices of ``D``.
        damping_scale: Multiplier of the damping (see the module docstring).
    """

    def __init__(self, grads: torch.Tensor, layout: GradientLayout, damping_scale: float = 0.1):
        self.grads = grads
        self.slices = layout.slices()
        self.dampings = [layer_damping(grads[:, s], damping_scale) for s in self.slices]
        self._factors = [self._factor(grads[:, s].double(), d) for s, d in self._pairs()]

    def _pairs(self) -> list[tuple[slice, float]]:
        return list(zip(self.slices, self.dampings, strict=True))

    @staticmethod
    def _factor(g: torch.Tensor, damping: float) -> torch.Tensor:
        import torch

        count, width = g.shape
        if width <= count:
            system = g.T @ g / count + damping * torch.eye(width, dtype=g.dtype)
        else:
            system = g @ g.T + count * damping * torch.eye(count, dtype=g.dtype)
        factor: torch.Tensor = torch.linalg.cholesky(system)
        return factor

    def _solve(self, index: int, q: torch.Tensor) -> torch.Tensor:
        """``H_l^-1 q_l`` for the columns of ``q [w, Q]``."""
        import torch

        g = self.grads[:, self.slices[index]]
        factor, damping = self._factors[index], self.dampings[index]
        if g.shape[1] <= g.shape[0]:
            solved: torch.Tensor = torch.cholesky_solve(q, factor)
            return solved
        # NOTE: Woodbury (fewer rows than values) cancels q against G^T inner when the
        # damping is small: float64 throughout, cheap since G_l has few rows here.
        g = g.double()
        inner = torch.cholesky_solve(g @ q, factor)
        return (q - g.T @ inner) / damping

    def scores(self, queries: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return ``sum_l G_l H_l^-1 q_l``."""
        import torch

        query, single = _columns(queries[-1])
        total = torch.zeros(self.grads.shape[0], query.shape[1], dtype=torch.float64)
        for index, part in enumerate(self.slices):
            total += _times(self.grads[:, part], self._solve(index, query[part]))
        return _rows(total, single)


class DataInfScorer:
    """``datainf``: closed-form approximate inverse (see the module docstring).

    Args:
        grads: Training gradients, ``n x D``.
        layout: Layer slices of ``D``.
        damping_scale: Multiplier of the damping.
    """

    def __init__(self, grads: torch.Tensor, layout: GradientLayout, damping_scale: float = 0.1):
        self.grads = grads
        self.slices = layout.slices()
        self.dampings = [layer_damping(grads[:, s], damping_scale) for s in self.slices]
        self._weights = [
            1.0 / (d + grads[:, s].double().pow(2).sum(dim=1))
            for s, d in zip(self.slices, self.dampings, strict=True)
        ]

    def scores(self, queries: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return ``sum_l G_l v_l`` with ``v_l`` DataInf's estimate of ``H_l^-1 q_l``."""
        import torch

        query, single = _columns(queries[-1])
        count = self.grads.shape[0]
        total = torch.zeros(count, query.shape[1], dtype=torch.float64)
        for index, part in enumerate(self.slices):
            g, q = _widened(self.grads[:, part]), query[part]
            dots = _times(g, q)
            correction = _times(g.T, dots * self._weights[index][:, None]) / count
            total += _times(g, (q - correction) / self.dampings[index])
        return _rows(total, single)


class TracInScorer:
    """``tracin``: learning-rate-weighted gradient dot products summed over checkpoints.

    Args:
        grads: Training gradients per checkpoint, each ``n x D``.
        learning_rates: Learning rate per checkpoint.
    """

    def __init__(self, grads: Sequence[torch.Tensor], learning_rates: Sequence[float]):
        if len(grads) != len(learning_rates) or not grads:
            raise ValueError("tracin needs one learning rate per checkpoint, and a checkpoint")
        self.grads = list(grads)
        self.learning_rates = list(learning_rates)

    def scores(self, queries: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return ``sum_c eta_c G_c q_c``."""
        single = queries[0].dim() == 1
        parts = zip(self.grads, queries, self.learning_rates, strict=True)
        total = sum(eta * _times(g, _columns(q)[0]) for g, q, eta in parts)
        return _rows(total, single)  # type: ignore[arg-type]


class GradCosScorer:
    """``gradcos``: cosine similarity of whole (projected) gradients.

    Args:
        grads: Training gradients, ``n x D``.
    """

    def __init__(self, grads: torch.Tensor):
        import torch

        self.grads = grads
        chunks = [grads[start : start + 256] for start in range(0, grads.shape[0], 256)]
        self._norms = torch.cat([rows.double().norm(dim=1) for rows in chunks])

    def scores(self, queries: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return ``G q / (|g_i| |q|)`` (0 where a norm is 0)."""
        query, single = _columns(queries[-1])
        denominator = self._norms[:, None] * query.norm(dim=0)[None, :]
        dots = _times(self.grads, query)
        cosine: torch.Tensor = dots / denominator.clamp_min(1e-30)
        return _rows(cosine, single)


def _columns(query: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A ``[D]`` query or ``[Q, D]`` queries as float64 columns ``[D, Q]``; True for one."""
    single = query.dim() == 1
    rows = query[None, :] if single else query
    return rows.double().T, single


def _rows(scores: torch.Tensor, single: bool) -> torch.Tensor:
    """Scores ``[n, Q]`` as ``[n]`` for one query, else ``[Q, n]``."""
    return scores[:, 0] if single else scores.T


def _widened(layer: torch.Tensor) -> torch.Tensor:
    """One layer's 16-bit rows as float32, once for the several products a scorer takes
    with them (float32 and float64 rows unchanged)."""
    import torch

    return layer if layer.dtype in (torch.float32, torch.float64) else layer.float()


_WIDEN_ROWS = 4096
"""Rows of a 16-bit matrix widened to float32 at once by :func:`_times`."""


def _times(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``matrix @ vector`` in float32 (no float64 copy of the matrix), as float64.

    16-bit matrices are widened to float32 :data:`_WIDEN_ROWS` rows at a time, so the
    products accumulate in float32 and no float32 copy of the whole matrix is made.

    NOTE: the gradient rows are float32 or 16-bit (possibly memory-mapped); converting a
    2,000-record index to float64 on every query cost more than the query gradient itself.
    Small systems (Cholesky factors, damping, weights) stay in float64.
    """
    import torch

    if matrix.dtype in (torch.float32, torch.float64):
        product: torch.Tensor = matrix @ vector.to(matrix.dtype)
        return product.double()
    wide = vector.float()
    blocks = [
        matrix[start : start + _WIDEN_ROWS].float() @ wide
        for start in range(0, matrix.shape[0], _WIDEN_ROWS)
    ]
    return torch.cat(blocks).double()


def make_scorer(
    method: str,
    grads: Sequence[torch.Tensor],
    layout: GradientLayout,
    *,
    learning_rates: Sequence[float] = (),
    damping_scale: float = 0.1,
) -> Scorer:
    """Return the scorer of ``method`` over training gradients (one tensor per checkpoint).

    Raises:
        ValueError: For an unknown method.
    """
    if method == "exact":
        return ExactScorer(grads[-1], layout, damping_scale)
    if method == "datainf":
        return DataInfScorer(grads[-1], layout, damping_scale)
    if method == "tracin":
        return TracInScorer(grads, learning_rates)
    if method == "gradcos":
        return GradCosScorer(grads[-1])
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
