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
        method: ``exact``, ``datainf``, ``tracin`` or ``gradcos``.
        projection_dim: Random projection per LoRA factor side (default: none).
        grant: Access grant for a private datanet.

    Returns:
        The :class:`AttributionReport`.

    Raises:
        SnapshotMismatchError: The adapter was trained on another snapshot.
        AttributionInputError: Bad method, settings, prompt or completion.
    """
    index = InfluenceIndex.build(
        adapter,
        snapshot,
        method,
        projection_dim=projection_dim,
        grant=grant,
        progress=False,
    )
    return index.attribute(prompt, completion)
