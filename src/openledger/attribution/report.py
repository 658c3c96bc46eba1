"""``AttributionReport``: how much each training record, and each contributor, shaped an answer.

A contributor's score is the sum of its records' scores. Its *share* is its positive score
over the sum of all positive contributor scores; a contributor whose records net hurt the
answer (score <= 0) has no share, and its negative score is reported as a penalty, which
:func:`~openledger.attribution.split_rewards` turns into reputation, never into a debt.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from typing import Any

from openledger.types import Address, Hash32

__all__ = ["METHOD_RELIABILITY", "AttributionReport", "MatchedSpan", "RecordScore"]

_BENCHMARK = "on the attribution benchmark (tiny Llama, 20 records, 5 contributors, 6 answers)"
METHOD_RELIABILITY: dict[str, str] = {
    "exact": (
        f"exact (damped Fisher inverse, the reference) {_BENCHMARK}: LDS 0.83 against 50 "
        "retrainings; top contributor as leave-one-contributor-out retraining in 6/6 "
        "answers, the rest of the ranking only roughly (Spearman 0.67)"
    ),
    "datainf": (
        f"datainf (closed-form inverse) {_BENCHMARK}: Pearson 0.92 with exact, LDS 0.81; "
        "top contributor as leave-one-contributor-out retraining in 6/6 answers "
        "(Spearman 0.73)"
    ),
    "tracin": (
        f"tracin (gradient dot products) {_BENCHMARK}: Pearson 0.87 with exact, LDS 0.80; "
        "top contributor as leave-one-contributor-out retraining in 6/6 answers "
        "(Spearman 0.68)"
    ),
    "gradcos": (
        f"gradcos (gradient cosine) {_BENCHMARK}: Pearson 0.89 with exact, LDS 0.82; "
        "top contributor as leave-one-contributor-out retraining in 6/6 answers "
        "(Spearman 0.70)"
    ),
    "spans": (
        f"spans (longest shared spans, rarity-weighted; text overlap, not influence) "
        f"{_BENCHMARK}: Pearson 0.79 with exact, LDS 0.76; top contributor as "
        "leave-one-contributor-out retraining in 6/6 answers; an answer in words no record "
        "holds earns nobody anything"
    ),
}
"""How reliable each method was on the attribution benchmark
(``benchmarks/attribution_quality.py``: a tiny Llama with LoRA, 20 records from 5
contributors, 6 answers, 50 retrainings on random halves and 5 without one contributor):
what :attr:`AttributionReport.reliability` says."""


@dataclass(frozen=True, slots=True)
class RecordScore:
    """One training record's influence on the answer.

    Attributes:
        record_hash: The record's hash in the snapshot.
        contributor: Who contributed it (``None`` when unknown).
        score: Its influence; positive when it helped produce the completion.
        text: The record as the model saw it (a preview).
    """

    record_hash: Hash32
    contributor: Address | None
    score: float
    text: str


@dataclass(frozen=True, slots=True)
class MatchedSpan:
    """A span of the answer that indexed records hold (span attribution).

    Attributes:
        start: Its first token's position in the answer's tokens.
        length: Its length in tokens.
        text: The span as text.
        weight: ``length * ln(records / holders)``: 0 when every record holds it.
        record_hashes: The records that hold it (its weight is shared among them); empty
            when its weight is 0 or more than ``spans.LISTED_HOLDERS`` records hold it.
        holders: How many indexed records hold it.
    """

    start: int
    length: int
    text: str
    weight: float
    record_hashes: tuple[Hash32, ...]
    holders: int


@dataclass(frozen=True, slots=True)
class AttributionReport:
    """Scores of every indexed training record for one ``(prompt, completion)``.

    Attributes:
        method: ``exact``, ``datainf``, ``tracin``, ``gradcos`` or ``spans``.
        adapter_id: The adapter the answer came from (zeros for the base model).
        snapshot_root: The snapshot the adapter was trained on.
        datanet_id: That snapshot's datanet (``None`` when unknown).
        prompt: The question.
        completion: The answer attributed.
        records: One score per indexed record, in snapshot order (``spans`` reports list
            only the records that score).
        spans: The answer's spans that records hold (``spans`` reports only).
    """

    method: str
    adapter_id: Hash32
    snapshot_root: Hash32
    datanet_id: Hash32 | None
    prompt: str
    completion: str
    records: tuple[RecordScore, ...]
    spans: tuple[MatchedSpan, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def reliability(self) -> str:
        """How reliable :attr:`method` was on the attribution benchmark
        (:data:`METHOD_RELIABILITY`)."""
        return METHOD_RELIABILITY.get(self.method, "not measured on the attribution benchmark")

    def scores(self) -> dict[Hash32, float]:
        """Return the score of each record by record hash."""
        return {r.record_hash: r.score for r in self.records}

    def contributor_scores(self) -> dict[Address, float]:
        """Return each contributor's summed score, by address (records without one skipped)."""
        totals: dict[Address, float] = {}
        for record in sorted(self.records, key=lambda r: (r.contributor or "", r.record_hash)):
            if record.contributor is not None:
                totals[record.contributor] = totals.get(record.contributor, 0.0) + record.score
        return dict(sorted(totals.items()))

    def contributor_shares(self) -> dict[Address, float]:
        """Return each positively scored contributor's share (they sum to 1; empty if none)."""
        positive = {a: s for a, s in self.contributor_scores().items() if s > 0}
        total = sum(positive.values())
        return {a: s / total for a, s in positive.items()} if total > 0 else {}

    def contributor_weights(self) -> dict[Address, int]:
        """Return the positive shares as integer weights (``round(share * SHARE_UNITS)``)."""
        from openledger.attribution.rewards import SHARE_UNITS

        found = {a: round(s * SHARE_UNITS) for a, s in self.contributor_shares().items()}
        return {a: w for a, w in found.items() if w > 0}

    def penalties(self) -> dict[Address, float]:
        """Return the negative summed scores of contributors whose records net hurt the answer."""
        return {a: s for a, s in self.contributor_scores().items() if s < 0}

    def top(self, k: int = 5) -> list[RecordScore]:
        """Return the ``k`` highest-scoring records (ties by record hash)."""
        return sorted(self.records, key=lambda r: (-r.score, r.record_hash))[:k]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready values (shares included)."""
        body = asdict(self)
        body["records"] = [asdict(r) for r in self.records]
        body["spans"] = [asdict(s) for s in self.spans]
        body["contributor_shares"] = self.contributor_shares()
        return body

    def to_json(self) -> str:
        """Return :meth:`to_dict` as JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def plot(self, ax: Any = None, *, top: int = 10) -> Any:
        """Draw the top records' scores as horizontal bars (needs matplotlib).

        Args:
            ax: A matplotlib ``Axes`` to draw on (default: a new figure).
            top: How many records to show.

        Returns:
            The ``Axes``.
        """
        from openledger.attribution._plot import bar_axes

        best = self.top(top)
        labels = [_short(r.text, 40) for r in best]
        return bar_axes(ax, labels, [r.score for r in best], f"{self.method} influence")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{r.score:+.4g}</td><td><code>{r.record_hash[:10]}</code></td>"
            f"<td><code>{(r.contributor or '-')[:10]}</code></td>"
            f"<td>{html.escape(_short(r.text, 80))}</td></tr>"
            for r in self.top(10)
        )
        shares = "".join(
            f"<li><code>{html.escape(a)}</code>: {s:.1%}</li>"
            for a, s in self.contributor_shares().items()
        )
        answer = (
            _highlighted(self.completion, self.spans)
            if self.spans
            else html.escape(_short(self.completion, 80))
        )
        return (
            f"<div><b>Attribution ({html.escape(self.method)})</b> of "
            f"<i>{answer}</i>"
            f"<p><small>{html.escape(self.reliability)}</small></p>"
            f"<table><tr><th>score</th><th>record</th><th>contributor</th><th>text</th></tr>"
            f"{rows}</table><ul>{shares}</ul></div>"
        )


def _highlighted(completion: str, spans: tuple[MatchedSpan, ...]) -> str:
    """The answer with each weighted span's text marked (first occurrence after the last)."""
    out, cursor = [], 0
    for span in spans:
        found = completion.find(span.text.strip(), cursor) if span.weight > 0 else -1
        if found < 0 or not span.text.strip():
            continue
        end = found + len(span.text.strip())
        out.append(html.escape(completion[cursor:found]))
        out.append(
            f"<mark title='weight {span.weight:.3g}'>{html.escape(completion[found:end])}</mark>"
        )
        cursor = end
    out.append(html.escape(completion[cursor:]))
    return "".join(out)


def _short(text: str, size: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= size else flat[: size - 1] + "…"
