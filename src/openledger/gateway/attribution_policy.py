"""How the attribution worker credits an adapter's answers: which index, and how many.

Each adapter has a *source*: its influence index (``index.json``, one backward pass per
answer) or a span index over its snapshot (``span_index.json``, milliseconds per answer,
any model), and a *sample rate*. With a rate below one, a receipt is scored when
``keccak256(requestId ++ "attribution-sample") / 2**256 < rate``: anyone can check which
receipts were scored, and nobody can steer which. Every other receipt of the adapter is
credited with the mean of the scored ones of the same adapter and settlement window, and
its attribution records that it is an estimate: how many scored answers it rests on and
the 95% confidence half-width of each contributor's share (``1.96 * sd / sqrt(n)``). A
window with no scored receipt yet waits; once the window has closed, its next receipt is
scored whatever the draw, so no receipt waits forever.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from openledger.attribution.rewards import SHARE_UNITS
from openledger.crypto import keccak256
from openledger.exceptions import AttributionInputError

if TYPE_CHECKING:
    from openledger.attribution import AttributionReport
    from openledger.train import Adapter

__all__ = ["AttributionSource", "averaged", "estimate", "sampled"]

SAMPLE_SALT = b"attribution-sample"
Kind = Literal["influence", "spans"]


@dataclass(frozen=True, slots=True)
class AttributionSource:
    """One adapter's index and sample rate.

    Attributes:
        adapter: The adapter folder.
        index: Its influence index folder, or a span index folder of its snapshot.
        sample: Fraction of its receipts scored (the rest get the scored ones' mean).
    """

    adapter: Path
    index: Path
    sample: float = 1.0

    @property
    def kind(self) -> Kind:
        """``"influence"`` or ``"spans"``, from the index folder's manifest."""
        if (self.index / "index.json").is_file():
            return "influence"
        if (self.index / "span_index.json").is_file():
            return "spans"
        raise AttributionInputError(
            f"{self.index} holds no influence index (index.json) or span index (span_index.json)"
        )

    @classmethod
    def of(
        cls, adapter: str | os.PathLike[str], index: str | os.PathLike[str], sample: float = 1.0
    ) -> AttributionSource:
        """Check and make a source.

        Raises:
            AttributionInputError: No index in the folder, or a rate outside (0, 1].
        """
        if not 0 < sample <= 1:
            raise AttributionInputError(f"a sample rate must be in (0, 1], got {sample}")
        found = cls(Path(adapter), Path(index), sample)
        _ = found.kind
        return found

    def scorer(self, adapter: Adapter) -> Any:
        """An object with ``attribute_many(answers) -> reports`` over this source's index.

        Raises:
            SnapshotMismatchError: The index is of another adapter or snapshot.
        """
        from openledger.attribution import InfluenceIndex

        if self.kind == "influence":
            return InfluenceIndex.load(self.index, adapter)
        return _SpanScorer(self.index, adapter)


class _SpanScorer:
    """A span index answering as an influence index does (the adapter's id on reports)."""

    def __init__(self, folder: Path, adapter: Adapter) -> None:
        from transformers import AutoTokenizer

        from openledger.attribution import SpanIndex
        from openledger.exceptions import SnapshotMismatchError
        from openledger.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(adapter.manifest.base_model).path)
        self.index = SpanIndex.load(folder, tokenizer)
        self.adapter = adapter
        if self.index.snapshot_root != adapter.manifest.snapshot_root:
            raise SnapshotMismatchError(
                f"the span index in {folder} is of snapshot {self.index.snapshot_root}; "
                f"adapter {adapter.id} was trained on {adapter.manifest.snapshot_root}"
            )
        self.method = "spans"

    def attribute_many(self, answers: list[tuple[str, str]]) -> list[AttributionReport]:
        return [self.index.attribute(p, c, adapter_id=self.adapter.id) for p, c in answers]


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id``'s receipt is scored at ``rate`` (see the module docstring)."""
    if rate >= 1:
        return True
    draw = int.from_bytes(keccak256(bytes.fromhex(request_id[2:]) + SAMPLE_SALT), "big")
    return draw < rate * 2**256


def averaged(reports: list[AttributionReport]) -> dict[str, Any]:
    """The reports' quantised positive shares and penalties, averaged over the answers
    (integer division: the shares still sum to one share at most)."""
    weights: dict[str, int] = {}
    penalties: dict[str, int] = {}
    for report in reports:
        for account, weight in report.contributor_weights().items():
            weights[account] = weights.get(account, 0) + weight
        for account, score in report.penalties().items():
            units = round(-score * SHARE_UNITS)
            if units > 0:
                penalties[account] = penalties.get(account, 0) + units
    count = max(1, len(reports))
    return {
        "weights": {a: w // count for a, w in weights.items() if w // count > 0},
        "penalties": {a: p // count for a, p in penalties.items() if p // count > 0},
    }


def estimate(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of scored attributions, with each share's 95% confidence half-width.

    Args:
        scored: The ``shares`` of the scored receipts (``{"weights": ..., "penalties": ...}``).
    """
    n = len(scored)
    accounts = sorted({a for s in scored for a in s["weights"]})
    weights, spread = {}, {}
    for account in accounts:
        values = [s["weights"].get(account, 0) for s in scored]
        mean = sum(values) // n
        if mean > 0:
            weights[account] = mean
        if n > 1:
            variance = sum((v - sum(values) / n) ** 2 for v in values) / (n - 1)
            spread[account] = 1.96 * math.sqrt(variance / n) / SHARE_UNITS
    penalties: dict[str, int] = {}
    for s in scored:
        for account, units in s["penalties"].items():
            penalties[account] = penalties.get(account, 0) + units
    return {
        "weights": weights,
        "penalties": {a: p // n for a, p in penalties.items() if p // n > 0},
        "estimated_from": n,
        "ci95": spread,
    }
