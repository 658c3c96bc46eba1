"""The demo's HTML report: one self-contained page (inline SVG charts, no scripts)."""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Sequence

from openledger.demo.runner import DemoAnswer, DemoResult

__all__ = ["bar_chart", "line_chart", "render_report"]

_PALETTE = ("#2f6db5", "#d9822b", "#3a9d5d", "#b53a5a", "#7d5ab5", "#5a9db5", "#9d8a3a")
_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:.25em .6em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f6f6f6}code{font-size:.85em}
.num{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#2a7d3f}.bad{color:#b53a3a}
.answer{background:#f8f8fb;border-left:3px solid #2f6db5;padding:.4em .8em;margin:.4em 0}
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    width: int = 560,
    height: int = 240,
    x_label: str = "",
    y_label: str = "",
) -> str:
    """Return an inline SVG line chart of named ``(x, y)`` series (non-finite points dropped)."""
    points = {
        name: [(x, y) for x, y in values if math.isfinite(x) and math.isfinite(y)]
        for name, values in series.items()
    }
    every = [p for values in points.values() for p in values]
    if not every:
        return "<p><i>no data</i></p>"
    left, right, top, bottom = 48, 12, 12, 36
    x0, x1 = min(p[0] for p in every), max(p[0] for p in every)
    y0, y1 = min(0.0, min(p[1] for p in every)), max(p[1] for p in every)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_esc(y_label)} by {_esc(x_label)}">',
        f'<line x1="{left}" y1="{sy(y0):.1f}" x2="{width - right}" y2="{sy(y0):.1f}" '
        'stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
    ]
    for tick in (y0, (y0 + y1) / 2, y1):
        parts.append(
            f'<text x="{left - 6}" y="{sy(tick) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{tick:.2f}</text>'
        )
    for tick in (x0, x1):
        parts.append(
            f'<text x="{sx(tick):.1f}" y="{height - bottom + 14}" font-size="11" '
            f'text-anchor="middle">{tick:g}</text>'
        )
    parts.append(
        f'<text x="{(left + width) / 2:.0f}" y="{height - 4}" font-size="12" '
        f'text-anchor="middle">{_esc(x_label)}</text>'
    )
    for i, (name, values) in enumerate(points.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts.append(
            f'<text x="{width - right - 4}" y="{top + 14 + 15 * i}" font-size="12" '
            f'text-anchor="end" fill="{colour}">{_esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    values: dict[str, float],
    *,
    width: int = 460,
    highlight: str | None = None,
    fmt: str = "{:.1%}",
) -> str:
    """Return an inline SVG horizontal bar chart (negative values drawn to the left)."""
    if not values:
        return "<p><i>no data</i></p>"
    row, label_width, pad = 20, 90, 70
    span = max(abs(v) for v in values.values()) or 1.0
    has_negative = any(v < 0 for v in values.values())
    zero = label_width + ((width - label_width - pad) / 2 if has_negative else 0)
    scale = (width - label_width - pad) / (2 if has_negative else 1) / span
    height = row * len(values) + 6
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i, (name, value) in enumerate(values.items()):
        y = 3 + i * row
        length = abs(value) * scale
        x = zero - length if value < 0 else zero
        colour = "#d9822b" if name == highlight else ("#b53a5a" if value < 0 else "#2f6db5")
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 14}" font-size="12" '
            f'text-anchor="end">{_esc(name)}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{max(length, 0.5):.1f}" height="{row - 6}" '
            f'fill="{colour}"/>'
            f'<text x="{zero + (length if value >= 0 else 0) + 4:.1f}" y="{y + 14}" '
            f'font-size="11">{_esc(fmt.format(value))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _answer_block(answer: DemoAnswer) -> str:
    who = answer.adapter or ("base model + retrieval" if answer.retrieval else "base model")
    citations = "".join(
        f"<li>[{n}] <code>{_esc(h[:18])}...</code> by {_esc(name)}</li>"
        for n, h, name in answer.citations
    )
    shares = ""
    if answer.shares:
        method = (
            "context ablation (leave one contributor out)"
            if answer.retrieval
            else "influence (exact)"
        )
        ordered = dict(sorted(answer.shares.items(), key=lambda kv: -kv[1]))
        note = f" — taught by <b>{_esc(answer.teacher)}</b>" if answer.teacher else ""
        shares = f"<p>Contributor shares by {method}{note}:</p>" + bar_chart(
            ordered, highlight=answer.teacher
        )
    fact = ""
    if answer.states_fact is not None:
        said = "states" if answer.states_fact else "<b>does not state</b>"
        fact = f"<p>The answer {said} the datanet's fact: <i>{_esc(answer.expected or '')}</i></p>"
    return (
        f"<h3>{_esc(answer.question)} <small>({_esc(who)})</small></h3>"
        f'<div class="answer">{_esc(answer.text) or "<i>(empty)</i>"}</div>'
        + fact
        + f"<p><small>{answer.tokens} tokens, {answer.seconds:.2f} s</small></p>"
        + (f"<ul>{citations}</ul>" if citations else "")
        + shares
    )


def render_report(result: DemoResult) -> str:
    """Render a demo run as one HTML page."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    datanets = _table(
        ["datanet", "records", "contributors", "snapshot root", "on-chain id"],
        [
            [
                _esc(d["name"]),
                d["records"],
                _esc(", ".join(f"{n} ({c})" for n, c in d["contributors"].items())),
                f"<code>{_esc(d['root'])}</code>",
                f"<code>{_esc(str(d.get('chain_id', ''))[:18])}...</code>",
            ]
            for d in result.datanets
        ],
        {1},
    )
    curves = line_chart(
        {t["name"]: t["curve"] for t in result.training}, x_label="step", y_label="loss"
    )
    training = _table(
        ["adapter", "steps", "seconds", "adapter id", "model id"],
        [
            [
                _esc(t["name"]),
                t["steps"],
                f"{t['seconds']:.0f}",
                f"<code>{_esc(t['adapter_id'][:18])}...</code>",
                f"<code>{_esc(t['model_id'][:18])}...</code>",
            ]
            for t in result.training
        ],
        {1, 2},
    )
    answers = "".join(_answer_block(a) for a in result.answers)
    ordered = dict(sorted(result.payouts.items(), key=lambda kv: -kv[1]))
    total = sum(result.payouts.values())
    payouts = bar_chart(
        {n: v / result.pool_wei for n, v in ordered.items()} if result.pool_wei else {}
    ) + _table(
        ["payee", "payout (tokens)", "payout (wei)", "claimed balance (wei)", "claim"],
        [
            [
                _esc(n),
                f"{v / 10**18:.6f}",
                v,
                result.claimed.get(n, 0),
                '<span class="ok">ok</span>'
                if result.claimed.get(n) == v
                else '<span class="bad">missing</span>',
            ]
            for n, v in ordered.items()
        ]
        + [["<b>total</b>", f"{total / 10**18:.6f}", total, sum(result.claimed.values()), ""]],
        {1, 2, 3},
    )
    receipts = _table(
        ["receipt id", "served by", "tokens", "payer", "in the epoch"],
        [
            [
                f"<code>{_esc(r['receipt_id'][:18])}...</code>",
                _esc(r["adapters"]),
                r["tokens"],
                _esc(r["payer"]),
                "credited" if r["credited"] else "nothing owed (base model)",
            ]
            for r in result.receipts
        ],
        {2},
    )
    timings = _table(
        ["stage", "seconds"],
        [[_esc(k), f"{v:.1f}"] for k, v in result.timings.items()]
        + [["<b>total</b>", f"{sum(result.timings.values()):.1f}"]],
        {1},
    )
    exact = total == result.pool_wei
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>openledger demo report</title><style>{_STYLE}</style></head><body>"
        "<h1>openledger demo: from community data to paid contributors</h1>"
        f"<p>Base model <code>{_esc(result.base_model)}</code>; run at {when}; "
        f"folder <code>{_esc(result.output_dir)}</code>.</p>"
        f"<h2>1. Datanets</h2>{datanets}"
        f"<h2>2. Fine-tuning</h2>{curves}{training}"
        f"<h2>3. Answers and attribution</h2>{answers}"
        f"<h2>4. Settlement (epoch {result.epoch_id})</h2>"
        f"<p>Pool {result.pool_wei} wei; payouts sum to "
        f"<b class='{'ok' if exact else 'bad'}'>{total}</b> wei "
        f"({'exactly the pool' if exact else 'NOT the pool'}).</p>{payouts}"
        f"<p>The epoch was built from the {len(result.receipts)} signed receipts the gateway "
        "wrote (plus the retrieval answers):</p>"
        f"{receipts}"
        f"<h2>5. Timings</h2>{timings}</body></html>\n"
    )
