"""The documentation's examples run: the quickstart loop on a tiny model, the encodings' values.

Code blocks are read from the Markdown pages as they are published, so a page that drifts
from the API fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from openledger.chain import model_id

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
QUICKSTART_BASE = 'BASE = "smollm2-135m-instruct"'
# Pages whose python blocks are whole programs run here; other pages show fragments
# (names such as `snap` come from the text around them) and are only compiled.
RUNNABLE = ("quickstart.md", "encodings.md")


def python_blocks(page: str) -> list[str]:
    """Return the python code blocks of a docs page, in order."""
    return BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))


def run_page(page: str, replacements: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a page's python blocks in order in one namespace and return it."""
    code = "\n".join(python_blocks(page))
    for old, new in (replacements or {}).items():
        assert old in code, f"{page} no longer holds {old!r}"
        code = code.replace(old, new)
    namespace: dict[str, Any] = {"__name__": f"docs_{page.removesuffix('.md')}"}
    exec(compile(code, str(DOCS / page), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("page", RUNNABLE)
def test_runnable_pages_have_code(page: str) -> None:
    assert len(python_blocks(page)) >= 1


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_python_block_compiles(page: str) -> None:
    for number, block in enumerate(python_blocks(page)):
        # NOTE: top-level await is allowed, as in Jupyter and `python -m asyncio`.
        compile(block, f"{page} block {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_block_extraction_sees_only_python_fences() -> None:
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert BLOCK.findall(text) == ["x = 1\n", "y = 2\n"]


def test_encodings_page_values_hold() -> None:
    namespace = run_page("encodings.md")
    assert namespace["snapshot_root"].startswith("0x")


def test_quickstart_runs_end_to_end(
    tiny_llama_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    one_torch_thread: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    ns = run_page("quickstart.md", {QUICKSTART_BASE: f"BASE = {str(tiny_llama_dir)!r}"})
    printed = capsys.readouterr().out
    payouts = ns["epoch"].split.payouts
    assert sum(payouts.values()) == ns["pool"] == 10**18
    assert ns["epoch"].split.developer == ns["pool"] // 10
    contributors = {ns[name].address for name in ("alice", "bob", "carol")}
    assert set(ns["report"].contributor_shares()) <= contributors
    assert set(payouts) <= contributors | {ns["developer"].address}
    protocol = ns["protocol"]
    for payee, amount in payouts.items():
        assert protocol.rewards.is_claimed(ns["epoch"].epoch_id, payee)
        assert f"{payee} {amount}" in printed
    registrant = protocol.chain.default_account.address
    assert protocol.models.is_registered(model_id(ns["model"], registrant))
    assert (tmp_path / "quickstart" / "adapter" / "openledger_manifest.json").is_file()
