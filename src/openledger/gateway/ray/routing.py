"""The baseline routing by adapter is measured against: round-robin over LRU adapter slots."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["round_robin_loads"]


def round_robin_loads(sequence: Sequence[str], replicas: int, slots: int) -> int:
    """Adapter loads if request ``i`` went to replica ``i mod replicas``, each replica holding
    its last ``slots`` adapters (least recently used out first)."""
    caches: list[list[str]] = [[] for _ in range(replicas)]
    loads = 0
    for i, name in enumerate(sequence):
        cache = caches[i % replicas]
        if name in cache:
            cache.remove(name)
        else:
            loads += 1
            if len(cache) == slots:
                cache.pop(0)
        cache.append(name)
    return loads
