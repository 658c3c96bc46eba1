"""Stateful check of a datanet's bookkeeping against a plain-Python model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from openledger.crypto import Account, StandardMerkleTree
from openledger.data import Datanet, InstructionRecord
from openledger.exceptions import DuplicateRecordError

PEOPLE = [Account.from_key("0x" + f"{i + 11:064x}") for i in range(3)]
OWNER = Account.from_key("0x" + "0e" * 32)


class DatanetMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.dn = Datanet.create(
            Path(self.tmp) / "dn",
            name="m",
            schema=InstructionRecord,
            owner=OWNER,
            near_duplicate_threshold=0,
        )
        self.records: dict[str, tuple[str, str]] = {}  # hash -> (contributor, status)
        self.nonces = {p.address: 0 for p in PEOPLE}
        self.counter = 0

    def teardown(self) -> None:
        self.dn.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(who=st.sampled_from(PEOPLE), n=st.integers(1, 4), repeat_old=st.booleans())
    def contribute(self, who: Account, n: int, repeat_old: bool) -> None:
        fresh = []
        for _ in range(n):
            self.counter += 1
            fresh.append({"instruction": f"q{self.counter}", "response": f"a{self.counter}"})
        if repeat_old and self.records:
            old = self.dn.get(next(iter(self.records))).record
            with pytest.raises(DuplicateRecordError):
                self.dn.contribute([*fresh, old.model_dump(exclude_none=True)], contributor=who)
            return
        receipts = self.dn.contribute(fresh, contributor=who)
        self.nonces[who.address] += 1
        for receipt in receipts:
            self.records[receipt.record_hash] = (who.address, "accepted")

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data(), accept=st.booleans())
    def review(self, data: st.DataObject, accept: bool) -> None:
        digest = data.draw(st.sampled_from(sorted(self.records)))
        self.dn.review(digest, accept=accept, reason="checked", validator=OWNER)
        who, _ = self.records[digest]
        self.records[digest] = (who, "accepted" if accept else "rejected")

    @precondition(lambda self: any(s == "accepted" for _, s in self.records.values()))
    @rule()
    def snapshot(self) -> None:
        snap = self.dn.snapshot()
        accepted = [(h, w) for h, (w, s) in self.records.items() if s == "accepted"]
        assert snap.count == len(accepted)
        assert snap.root == StandardMerkleTree.of(accepted, ["bytes32", "address"]).root
        digest, who = accepted[-1]
        assert snap.leaf(digest)[1] == who

    @invariant()
    def counts_nonces_and_reputation_match(self) -> None:
        assert len(self.dn) == len(self.records)
        for person in PEOPLE:
            assert self.dn.next_nonce(person) == self.nonces[person.address]
            mine = [s for w, s in self.records.values() if w == person.address]
            rep = self.dn.reputation(person)
            assert (rep.records, rep.rejected) == (len(mine), mine.count("rejected"))


DatanetMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=15, deadline=None)
test_datanet_bookkeeping = DatanetMachine.TestCase
