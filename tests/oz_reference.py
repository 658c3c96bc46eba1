"""OpenZeppelin's own ``@openzeppelin/merkle-tree`` (run by node): the reference our Merkle
trees are held to. CI installs it with ``npm ci --prefix tests/js``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import missing_reference

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "oz_reference.js"


def oz_tree(
    encoding: list[str], values: list[list[Any]], multi: list[list[int]] | None = None
) -> dict[str, Any]:
    """The reference's root, proofs (and multiproofs of ``multi``) for ``values``; skips
    the calling test where node or the library is missing (fails under CI)."""
    node = shutil.which("node")
    if node is None:
        missing_reference("node is not installed")
    if not (JS_DIR / "node_modules" / "@openzeppelin" / "merkle-tree").is_dir():
        missing_reference("@openzeppelin/merkle-tree missing: run `npm ci --prefix tests/js`")
    out = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps({"encoding": encoding, "values": values, "multi": multi or []}),
        capture_output=True,
        text=True,
        check=True,
        cwd=JS_DIR,
        timeout=60,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]
