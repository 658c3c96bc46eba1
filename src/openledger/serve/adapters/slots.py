"""A fixed pool of device slots holding adapters, least recently used evicted first.

Torch-free bookkeeping: the table says which slot holds which adapter key; the store
moves the weights. A pinned key (pin count > 0) is never evicted: the engine pins the
adapters of the sequences in a step, users may pin hot adapters for good.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from openledger.exceptions import AdapterCapacityError

__all__ = ["SlotTable"]

K = TypeVar("K", bound=Hashable)


class SlotTable(Generic[K]):
    """Which adapter key each of ``num_slots`` device slots holds.

    Invariants::

        every resident key has exactly one slot; free slots + resident keys = num_slots
        LRU order: least recently acquired first; pinned keys are skipped by eviction

    Args:
        num_slots: Slots in the pool (>= 1).
    """

    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self._slots: OrderedDict[K, int] = OrderedDict()
        self._pins: dict[K, int] = {}
        self._free = list(range(num_slots - 1, -1, -1))  # pop() hands out slot 0 first

    @property
    def num_free(self) -> int:
        """Slots holding nothing."""
        return len(self._free)

    def resident(self) -> list[K]:
        """Resident keys, least recently used first."""
        return list(self._slots)

    def slot_of(self, key: K) -> int | None:
        """The key's slot, or None when it is not resident (does not count as a use)."""
        return self._slots.get(key)

    def is_pinned(self, key: K) -> bool:
        """Whether the key is resident and pinned."""
        return self._pins.get(key, 0) > 0

    def acquire(self, key: K) -> tuple[int, K | None]:
        """Make ``key`` resident and most recently used.

        Returns:
            ``(slot, evicted)``: the key's slot and the key evicted to free it (None when
            the key was resident or a slot was free). The caller loads the weights into
            the slot unless the key was already resident.

        Raises:
            AdapterCapacityError: The key is not resident and every slot is pinned.
        """
        if key in self._slots:
            self._slots.move_to_end(key)
            return self._slots[key], None
        evicted = None
        if not self._free:
            evicted = self._victim()
            self._free.append(self._slots.pop(evicted))
        slot = self._free.pop()
        self._slots[key] = slot
        return slot, evicted

    def pin(self, key: K) -> None:
        """Protect a resident key from eviction (counted: pin twice, unpin twice).

        Raises:
            KeyError: The key is not resident.
        """
        if key not in self._slots:
            raise KeyError(f"{key!r} holds no slot; acquire it first")
        self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, key: K) -> None:
        """Undo one :meth:`pin`.

        Raises:
            KeyError: The key is not pinned.
        """
        count = self._pins.get(key, 0)
        if count == 0:
            raise KeyError(f"{key!r} is not pinned")
        if count == 1:
            del self._pins[key]
        else:
            self._pins[key] = count - 1

    def release(self, key: K) -> int | None:
        """Free the key's slot (unload); returns the slot, or None if it held none.

        Raises:
            AdapterCapacityError: The key is pinned.
        """
        if self.is_pinned(key):
            raise AdapterCapacityError(f"adapter {key!r} is pinned or in use; cannot unload it")
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._free.append(slot)
        return slot

    def _victim(self) -> K:
        for key in self._slots:
            if not self.is_pinned(key):
                return key
        raise AdapterCapacityError(
            f"all {self.num_slots} adapter slots are pinned or in use; unpin an adapter "
            "or raise EngineConfig.max_adapter_slots"
        )
