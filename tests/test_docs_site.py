"""The built documentation site: every public name has its API entry, every page is built.

`nox -s docs` builds the site with `mkdocs build --strict` and runs this module against it
(``OPENLEDGER_DOCS_SITE``); run alone, the module builds the site itself, and skips where the
docs extra (mkdocs) is not installed.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
API_MODULES = (
    "models",
    "data",
    "crypto",
    "chain",
    "train",
    "serve",
    "attribution",
    "gateway",
    "studio",
    "demo",
)
ROOT_MODULES = ("exceptions", "types", "validation")


def nav_pages(entries: list[object]) -> list[str]:
    """Return every page named in a mkdocs ``nav`` (nested sections flattened)."""
    pages: list[str] = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages.extend(nav_pages(value) if isinstance(value, list) else [str(value)])
    return pages


def mkdocs_config() -> dict[str, object]:
    # NOTE: plain YAML (no !!python tags), so safe_load reads it.
    loaded: dict[str, object] = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = os.environ.get("OPENLEDGER_DOCS_SITE")
    if built:
        return Path(built)
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (nox -s docs runs it)")
    folder = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return folder


def test_nav_lists_every_page_and_only_pages_that_exist() -> None:
    pages = nav_pages(mkdocs_config()["nav"])  # type: ignore[arg-type]
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert sorted(pages) == sorted(on_disk)
    assert len(pages) == len(set(pages))


def test_nav_pages_helper_flattens_sections() -> None:
    nav = [{"Home": "index.md"}, {"A": [{"x": "a/x.md"}, {"y": "a/y.md"}]}, "z.md"]
    assert nav_pages(nav) == ["index.md", "a/x.md", "a/y.md", "z.md"]


@pytest.mark.parametrize("layer", API_MODULES + ROOT_MODULES)
def test_every_public_name_has_an_api_entry(site: Path, layer: str) -> None:
    module = importlib.import_module(f"openledger.{layer}")
    html = (site / "api" / layer / "index.html").read_text(encoding="utf-8")
    anchors = set(re.findall(rf'id="openledger\.{layer}\.([A-Za-z_0-9]+)"', html))
    # NOTE: a name that is also a submodule's name (train.finetune) is rendered from its
    # defining module; its anchor then carries that module's path.
    anchors |= set(re.findall(rf'id="openledger\.{layer}\.([a-z_]+)\.\1"', html))
    missing = sorted(set(module.__all__) - anchors)
    assert not missing, f"api/{layer}.md does not render {missing}"
    roles = re.findall(r":[a-z]+:<code>", html)
    assert not roles, f"api/{layer}.md shows Sphinx roles: {roles[:3]}"


def test_benchmark_results_are_included_as_they_are(site: Path) -> None:
    html = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", results, re.MULTILINE)
    assert headings
    for heading in headings:
        assert f">{heading}<" in html, heading
    assert "--8&lt;--" not in html


def test_quickstart_and_encodings_pages_are_built(site: Path) -> None:
    for page in ("quickstart", "encodings", "concepts", "notebook"):
        assert (site / page / "index.html").is_file(), page
