"""A datanet snapshot's root and proofs against ``@openzeppelin/merkle-tree`` (via node).

CI installs the reference with ``npm ci --prefix tests/js``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from datanet_rows import rows
from tests.conftest import missing_reference

from openledger.crypto import Account
from openledger.data import Datanet

JS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE = shutil.which("node")


@pytest.fixture(autouse=True)
def _reference_installed() -> None:
    if NODE is None:
        missing_reference("node is not installed")
    if not (JS_DIR / "node_modules" / "@openzeppelin" / "merkle-tree").is_dir():
        missing_reference("@openzeppelin/merkle-tree missing: run `npm ci --prefix tests/js`")


def test_snapshot_matches_openzeppelin(dn: Datanet, alice: Account, bob: Account) -> None:
    dn.contribute(rows(7, "a"), contributor=alice)
    dn.contribute(rows(6, "b"), contributor=bob)
    snap = dn.snapshot()
    values = [list(snap.leaf(h)) for h in snap.record_hashes()]
    assert NODE is not None
    out = subprocess.run(
        [NODE, str(JS_DIR / "oz_reference.js")],
        input=json.dumps({"encoding": ["bytes32", "address"], "values": values}),
        capture_output=True,
        text=True,
        check=True,
        cwd=JS_DIR,
        timeout=60,
    )
    ref = json.loads(out.stdout)
    assert snap.root == ref["root"]
    assert [snap.proof(h) for h in snap.record_hashes()] == ref["proofs"]
