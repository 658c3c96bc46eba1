"""A datanet snapshot's root and proofs against ``@openzeppelin/merkle-tree`` (via node).

CI installs the reference with ``npm ci --prefix tests/js``.
"""

from __future__ import annotations

from datanet_rows import rows
from tests.oz_reference import oz_tree

from openledger.crypto import Account
from openledger.data import Datanet


def test_snapshot_matches_openzeppelin(dn: Datanet, alice: Account, bob: Account) -> None:
    dn.contribute(rows(7, "a"), contributor=alice)
    dn.contribute(rows(6, "b"), contributor=bob)
    snap = dn.snapshot()
    values = [list(snap.leaf(h)) for h in snap.record_hashes()]
    ref = oz_tree(["bytes32", "address"], values)
    assert snap.root == ref["root"]
    assert [snap.proof(h) for h in snap.record_hashes()] == ref["proofs"]
