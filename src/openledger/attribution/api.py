"""``attribute``: the one-call form (build an in-memory index, attribute one answer)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from openledger.attribution.index import InfluenceIndex
from openledger.attribution.report import AttributionReport

if TYPE_CHECKING:
    from openledger.data import AccessGrant, Snapshot
    from openledger.train import Adapter

__all__ = ["attribute"]


def attribute(
    adapter: Adapter | str | os.PathLike[str],
    snapshot: Snapshot,
    *,
    prompt: str,
    completion: str,
    method: str = "datainf",
    projection_dim: int | None = None,
    grant: AccessGrant | None = None,
) -> AttributionReport:
    """Attribute one answer of ``adapter`` to the records of ``snapshot``.

    Builds an in-memory :class:`InfluenceIndex` each call; to attribute many answers,
    build the index once and call :meth:`InfluenceIndex.attribute`.

    Args:
        adapter: The adapter (or its folder) that produced the answer.
        snapshot: The snapshot it was trained on.
        prompt: The question.
        completion: The answer.
        method: ``exact``, ``datainf``, ``tracin``, ``gradcos``, or ``spans`` (the longest
            spans of the answer that records hold; needs only the base model's tokenizer,
            see :class:`~openledger.attribution.SpanIndex`).
        projection_dim: Random projection per LoRA factor side (default: none).
        grant: Access grant for a private datanet.

    Returns:
        The :class:`AttributionReport`.

    Raises:
        SnapshotMismatchError: The adapter was trained on another snapshot.
        AttributionInputError: Bad method, settings, prompt or completion.
    """
    if method == "spans":
        return _spans(adapter, snapshot, prompt, completion, grant)
    index = InfluenceIndex.build(
        adapter,
        snapshot,
        method,
        projection_dim=projection_dim,
        grant=grant,
        progress=False,
    )
    return index.attribute(prompt, completion)


def _spans(
    adapter: Adapter | str | os.PathLike[str],
    snapshot: Snapshot,
    prompt: str,
    completion: str,
    grant: AccessGrant | None,
) -> AttributionReport:
    from transformers import AutoTokenizer

    from openledger.attribution.spans import SpanIndex
    from openledger.models import resolve_model
    from openledger.train import Adapter

    found = adapter if isinstance(adapter, Adapter) else Adapter.open(adapter)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(found.manifest.base_model).path)
    index = SpanIndex.build(snapshot, tokenizer, grant=grant)
    return index.attribute(prompt, completion, adapter_id=found.id)
