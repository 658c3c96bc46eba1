"""Adapter slot LRU: exact orders on small cases and a hypothesis state machine."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from openledger.exceptions import AdapterCapacityError
from openledger.serve.adapters.slots import SlotTable


def test_least_recently_used_unpinned_key_is_evicted() -> None:
    table: SlotTable[str] = SlotTable(2)
    assert table.acquire("a") == (0, None)
    assert table.acquire("b") == (1, None)
    assert table.acquire("a") == (0, None)  # a is now most recent
    assert table.acquire("c") == (1, "b")
    table.pin("a")
    assert table.acquire("d") == (1, "c")  # a pinned: the older key survives
    table.pin("d")
    with pytest.raises(AdapterCapacityError, match="all 2 adapter slots"):
        table.acquire("e")
    table.unpin("d")
    assert table.acquire("e") == (1, "d")
    assert table.resident() == ["a", "e"]


def test_release_and_pin_errors() -> None:
    table: SlotTable[str] = SlotTable(1)
    with pytest.raises(KeyError):
        table.pin("x")
    table.acquire("x")
    table.pin("x")
    with pytest.raises(AdapterCapacityError, match="pinned"):
        table.release("x")
    table.unpin("x")
    with pytest.raises(KeyError):
        table.unpin("x")
    assert table.release("x") == 0
    assert table.release("x") is None
    assert table.num_free == 1
    with pytest.raises(ValueError, match="num_slots"):
        SlotTable(0)


KEYS = st.sampled_from("abcdefg")


class SlotMachine(RuleBasedStateMachine):
    """The table against a plain list model (LRU order) and a pin counter."""

    def __init__(self) -> None:
        super().__init__()
        self.table: SlotTable[str] = SlotTable(3)
        self.order: list[str] = []
        self.slots: dict[str, int] = {}
        self.pins: dict[str, int] = {}

    @rule(key=KEYS)
    def acquire(self, key: str) -> None:
        unpinned = [k for k in self.order if not self.pins.get(k)]
        if key not in self.order and len(self.order) == 3 and not unpinned:
            with pytest.raises(AdapterCapacityError):
                self.table.acquire(key)
            return
        slot, evicted = self.table.acquire(key)
        if key in self.order:
            assert (slot, evicted) == (self.slots[key], None)
            self.order.remove(key)
        elif len(self.order) == 3:
            assert evicted == unpinned[0]
            assert slot == self.slots.pop(evicted)
            self.order.remove(evicted)
        else:
            assert evicted is None
            assert slot not in self.slots.values()
        self.order.append(key)
        self.slots[key] = slot

    @rule(key=KEYS)
    def pin(self, key: str) -> None:
        if key not in self.order:
            with pytest.raises(KeyError):
                self.table.pin(key)
            return
        self.table.pin(key)
        self.pins[key] = self.pins.get(key, 0) + 1

    @rule(key=KEYS)
    def unpin(self, key: str) -> None:
        if not self.pins.get(key):
            with pytest.raises(KeyError):
                self.table.unpin(key)
            return
        self.table.unpin(key)
        self.pins[key] -= 1

    @rule(key=KEYS)
    def release(self, key: str) -> None:
        if self.pins.get(key):
            with pytest.raises(AdapterCapacityError):
                self.table.release(key)
            return
        assert self.table.release(key) == self.slots.pop(key, None)
        if key in self.order:
            self.order.remove(key)

    @invariant()
    def matches_model(self) -> None:
        assert self.table.resident() == self.order
        assert {k: self.table.slot_of(k) for k in self.order} == self.slots
        assert self.table.num_free + len(self.order) == 3
        assert sorted(self.slots.values()) == sorted(set(self.slots.values()))


SlotMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_slot_machine = SlotMachine.TestCase
