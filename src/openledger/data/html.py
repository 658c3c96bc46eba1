"""Jupyter ``_repr_html_`` renderings of datanets and snapshots."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openledger.data.datanet import Datanet
    from openledger.data.snapshot import Snapshot

__all__ = ["datanet_html", "snapshot_html"]

_MAX_ROWS = 10


def _table(title: str, rows: list[tuple[str, str]], contributors: dict[str, int]) -> str:
    body = "".join(
        f"<tr><th style='text-align:left'>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>"
        for k, v in rows
    )
    top = sorted(contributors.items(), key=lambda kv: (-kv[1], kv[0]))[:_MAX_ROWS]
    people = "".join(f"<tr><td><code>{escape(a)}</code></td><td>{n}</td></tr>" for a, n in top)
    more = len(contributors) - len(top)
    tail = f"<tr><td colspan='2'>... and {more} more</td></tr>" if more > 0 else ""
    return (
        f"<div><strong>{escape(title)}</strong><table>{body}</table>"
        f"<table><tr><th>contributor</th><th>records</th></tr>{people}{tail}</table></div>"
    )


def datanet_html(datanet: Datanet) -> str:
    """Return an HTML summary: name, schema, counts, contributors, latest root."""
    latest = datanet.latest_snapshot()
    rows = [
        ("id", datanet.id),
        ("schema", datanet.schema.schema_id),
        ("visibility", datanet.visibility),
        ("records", str(len(datanet))),
        ("contributors", str(len(datanet.contributors()))),
        ("snapshots", str(len(datanet.snapshots()))),
        ("latest root", latest.root if latest else "(no snapshot yet)"),
    ]
    return _table(
        f"Datanet {datanet.name}", rows, {str(k): v for k, v in datanet.contributors().items()}
    )


def snapshot_html(snapshot: Snapshot) -> str:
    """Return an HTML summary: id, root, count, manifest hash, contributors."""
    rows = [
        ("datanet", str(snapshot.manifest.get("name", ""))),
        ("root", snapshot.root),
        ("records", str(snapshot.count)),
        ("contributors", str(len(snapshot.contributors))),
        ("manifest hash", snapshot.manifest_hash),
    ]
    return _table(
        f"Snapshot {snapshot.id}", rows, {str(k): v for k, v in snapshot.contributors.items()}
    )
