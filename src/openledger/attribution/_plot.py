"""Matplotlib drawing for reports (imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openledger.exceptions import MissingDependencyError

__all__ = ["bar_axes"]


def bar_axes(ax: Any, labels: Sequence[str], values: Sequence[float], title: str) -> Any:
    """Draw horizontal bars, best on top, on ``ax`` (or a new figure) and return the axes.

    Raises:
        MissingDependencyError: If matplotlib is not installed.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "report.plot() needs matplotlib: `pip install matplotlib`"
        ) from None
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.35 * max(len(values), 2) + 1))
    positions = list(range(len(values)))[::-1]
    ax.barh(positions, list(values), color=["tab:green" if v >= 0 else "tab:red" for v in values])
    ax.set_yticks(positions, list(labels))
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_title(title)
    return ax
