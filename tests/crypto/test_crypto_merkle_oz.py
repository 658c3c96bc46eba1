"""Roots and proofs against OpenZeppelin's own ``@openzeppelin/merkle-tree`` (run by node).

CI installs the reference with ``npm ci --prefix tests/js``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import missing_reference

from openledger.crypto import StandardMerkleTree

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "oz_reference.js"
NODE = shutil.which("node")


@pytest.fixture(autouse=True)
def _reference_installed() -> None:
    if NODE is None:
        missing_reference("node is not installed")
    if not (JS_DIR / "node_modules" / "@openzeppelin" / "merkle-tree").is_dir():
        missing_reference("@openzeppelin/merkle-tree missing: run `npm ci --prefix tests/js`")


def oz(
    encoding: list[str], values: list[list[Any]], multi: list[list[int]] | None = None
) -> dict[str, Any]:
    assert NODE is not None
    out = subprocess.run(
        [NODE, str(SCRIPT)],
        input=json.dumps({"encoding": encoding, "values": values, "multi": multi or []}),
        capture_output=True,
        text=True,
        check=True,
        cwd=JS_DIR,
        timeout=60,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 100, 257])
def test_bytes32_address_leaves_match_openzeppelin(n: int) -> None:
    rng = random.Random(n)
    values = [["0x" + rng.randbytes(32).hex(), "0x" + rng.randbytes(20).hex()] for _ in range(n)]
    ours = StandardMerkleTree.of(values, ["bytes32", "address"])
    ref = oz(["bytes32", "address"], values)
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
    ref = oz(encoding, values)
    assert ours.root == ref["root"]
    assert [ours.proof(i) for i in range(len(values))] == ref["proofs"]


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13, 40])
def test_multiproofs_match_openzeppelin(n: int) -> None:
    rng = random.Random(100 + n)
    values = [["0x" + rng.randbytes(32).hex(), "0x" + rng.randbytes(20).hex()] for _ in range(n)]
    sets = [[], [0], list(range(n)), rng.sample(range(n), min(n, 3)), rng.sample(range(n), n // 2)]
    ours = StandardMerkleTree.of(values, ["bytes32", "address"])
    ref = oz(["bytes32", "address"], values, sets)
    for indices, expected in zip(sets, ref["multiproofs"], strict=True):
        mine = ours.multiproof(indices)
        assert [list(v) for v in mine.values] == expected["leaves"]
        assert list(mine.proof) == expected["proof"]
        assert list(mine.proof_flags) == expected["proofFlags"]
