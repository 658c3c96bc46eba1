"""Roots and proofs against OpenZeppelin's own ``@openzeppelin/merkle-tree`` (run by node).

CI installs the reference with ``npm ci --prefix tests/js``.
"""

from __future__ import annotations

import random

import pytest
from tests.oz_reference import oz_tree

from openledger.crypto import StandardMerkleTree


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 100, 257])
def test_bytes32_address_leaves_match_openzeppelin(n: int) -> None:
    rng = random.Random(n)
    values = [["0x" + rng.randbytes(32).hex(), "0x" + rng.randbytes(20).hex()] for _ in range(n)]
    ours = StandardMerkleTree.of(values, ["bytes32", "address"])
    ref = oz_tree(["bytes32", "address"], values)
    assert ours.root == ref["root"]
    assert [ours.proof(i) for i in range(n)] == ref["proofs"]


def test_duplicate_and_mixed_type_leaves_match_openzeppelin() -> None:
    values = [
        ["0x" + "11" * 20, "5", "abc", True],
        ["0x" + "22" * 20, "1000000000000000000", "", False],
        ["0x" + "11" * 20, "5", "abc", True],
        ["0x" + "33" * 20, "0", "ünïcødé", True],
    ]
    encoding = ["address", "uint256", "string", "bool"]
    ours = StandardMerkleTree.of([[a, int(u), s, b] for a, u, s, b in values], encoding)
    ref = oz_tree(encoding, values)
    assert ours.root == ref["root"]
    assert [ours.proof(i) for i in range(len(values))] == ref["proofs"]


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13, 40])
def test_multiproofs_match_openzeppelin(n: int) -> None:
    rng = random.Random(100 + n)
    values = [["0x" + rng.randbytes(32).hex(), "0x" + rng.randbytes(20).hex()] for _ in range(n)]
    sets = [[], [0], list(range(n)), rng.sample(range(n), min(n, 3)), rng.sample(range(n), n // 2)]
    ours = StandardMerkleTree.of(values, ["bytes32", "address"])
    ref = oz_tree(["bytes32", "address"], values, sets)
    for indices, expected in zip(sets, ref["multiproofs"], strict=True):
        mine = ours.multiproof(indices)
        assert [list(v) for v in mine.values] == expected["leaves"]
        assert list(mine.proof) == expected["proof"]
        assert list(mine.proof_flags) == expected["proofFlags"]
