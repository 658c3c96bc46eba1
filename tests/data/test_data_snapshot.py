"""Snapshots: proofs, order independence, immutability, manifests, OpenZeppelin parity."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest
from datanet_rows import rows
from hypothesis import given, settings
from hypothesis import strategies as st

from openledger.crypto import Account, StandardMerkleTree, keccak256, to_hex, verify_multiproof
from openledger.data import Datanet, InstructionRecord, Snapshot, verify_proof
from openledger.exceptions import DataNotFoundError

KEYS = [Account.from_key("0x" + f"{i + 1:064x}") for i in range(3)]


def build(order: list[tuple[int, dict[str, str]]], folder: Path) -> Snapshot:
    dn = Datanet.create(folder, name="p", schema=InstructionRecord, near_duplicate_threshold=0)
    for who, row in order:
        dn.contribute([row], contributor=KEYS[who])
    return dn.snapshot()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_root_does_not_depend_on_insertion_order(owners: list[int], rnd: random.Random) -> None:
    items = list(zip(owners, rows(len(owners)), strict=True))
    shuffled = list(items)
    rnd.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = build(items, Path(tmp) / "a"), build(shuffled, Path(tmp) / "b")
        assert a.root == b.root
        assert a.contributors == b.contributors


def test_every_proof_verifies_and_altered_ones_do_not(
    dn: Datanet, alice: Account, bob: Account
) -> None:
    dn.contribute(rows(5, "a"), contributor=alice)
    dn.contribute(rows(4, "b"), contributor=bob)
    snap = dn.snapshot()
    for digest in snap.record_hashes():
        proof = snap.proof(digest)
        who = snap.leaf(digest)[1]
        assert verify_proof(snap.root, digest, who, proof)
        other = bob.address if who == alice.address else alice.address
        assert not verify_proof(snap.root, digest, other, proof)
        assert not verify_proof(snap.root, to_hex(keccak256(b"x")), who, proof)
        assert not verify_proof(snap.root, digest, who, proof[:-1])
        assert not verify_proof(snap.root, digest, who, [to_hex(keccak256(b"y")), *proof[1:]])
    assert not verify_proof(snap.root, "0x1234", alice.address, [])


def test_root_matches_a_tree_over_the_documented_leaves(dn: Datanet, alice: Account) -> None:
    receipts = dn.contribute(rows(6), contributor=alice)
    snap = dn.snapshot()
    values = [(r.record_hash, alice.address) for r in receipts]
    assert snap.root == StandardMerkleTree.of(values, ["bytes32", "address"]).root


def test_snapshots_are_immutable_and_reopenable(dn: Datanet, alice: Account, bob: Account) -> None:
    first = dn.contribute(rows(3), contributor=alice)
    snap1 = dn.snapshot()
    dn.contribute(rows(2, "later"), contributor=bob)
    dn.review(
        first[0].record_hash,
        accept=False,
        reason="wrong answer",
        validator=Account.from_key("0x" + "0e" * 32),
    )
    snap2 = dn.snapshot()
    again = Datanet.open(dn.path).snapshot_at(snap1.id)
    assert again.root == snap1.root
    assert again.count == 3
    assert again.manifest == snap1.manifest
    assert snap2.count == 4
    assert first[0].record_hash not in snap2.record_hashes()
    assert [s.record_hash for s in again.records()] == [r.record_hash for r in first]
    assert dn.snapshots() == [1, 2]
    with pytest.raises(DataNotFoundError, match="not in snapshot 2"):
        snap2.proof(first[0].record_hash)
    with pytest.raises(DataNotFoundError, match="no snapshot with id 9"):
        dn.snapshot_at(9)


def test_manifest_names_everything_and_hashes_canonically(
    dn: Datanet, alice: Account, bob: Account
) -> None:
    dn.contribute(rows(2), contributor=alice)
    dn.contribute(rows(1, "b"), contributor=bob)
    snap = dn.snapshot()
    m = snap.manifest
    assert m["datanet_id"] == dn.id
    assert m["name"] == "medqa"
    assert m["count"] == 3
    assert m["root"] == snap.root
    assert m["schema_id"] == "openledger.instruction/1"
    assert m["schema_hash"].startswith("0x")
    assert m["leaf_encoding"] == ["bytes32", "address"]
    assert snap.contributors == {alice.address: 2, bob.address: 1}
    text = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert snap.manifest_hash == to_hex(keccak256(text.encode()))
    assert "Snapshot 1" in snap._repr_html_()
    assert snap.root in dn._repr_html_()


def test_empty_datanet_cannot_be_snapshotted(dn: Datanet) -> None:
    with pytest.raises(DataNotFoundError, match="no accepted records to snapshot"):
        dn.snapshot()
    assert dn.latest_snapshot() is None


def test_multiproof_of_several_records(dn: Datanet, alice: Account) -> None:
    receipts = dn.contribute(rows(9), contributor=alice)
    snap = dn.snapshot()
    chosen = [receipts[1].record_hash, receipts[4].record_hash, receipts[8].record_hash]
    multi = snap.multiproof(chosen)
    assert verify_multiproof(snap.root, multi)
    assert sorted(v[0] for v in multi.values) == sorted(bytes.fromhex(h[2:]) for h in chosen)
    with pytest.raises(DataNotFoundError, match="not in snapshot"):
        snap.multiproof(["0x" + "00" * 32])
