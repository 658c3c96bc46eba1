"""Turn a model name into a local folder of Hugging Face files.

Resolution order, first match wins:

1. an existing local folder (``./my-model``, ``/abs/path``, ``~/models/x``);
2. a known offline alias (:data:`openledger.models.ALIASES`), converted once into the cache;
3. a Hugging Face hub id ``org/name`` or ``org/name@revision``, through ``huggingface_hub``
   and its cache; with ``HF_HUB_OFFLINE=1`` only the cache is consulted.

A name that looks like a path (starts with ``.``, ``/`` or ``~``) but does not exist is an
error, never a hub lookup.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from openledger.exceptions import ModelNotAvailableError, UnknownModelError
from openledger.models.aliases import ALIASES, get_alias
from openledger.models.cache import ensure_converted

__all__ = ["ModelSource", "hub_cache_dir", "hub_offline", "resolve_model"]

SourceKind = Literal["local", "alias", "hub"]

# NOTE: weights are fetched as safetensors only; pickle checkpoints are never downloaded.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model name resolved to.

    Attributes:
        name: The name as given.
        kind: ``"local"``, ``"alias"`` or ``"hub"``.
        path: A local folder holding ``config.json``, weights and tokenizer files.
        revision: The hub revision asked for (hub ids only).
    """

    name: str
    kind: SourceKind
    path: Path
    revision: str | None = None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read at call time."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((flag or "").strip().lower() in _TRUE for flag in flags)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, read at call time."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home).expanduser() / "hub"


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1)


def resolve_model(name_or_path: str | os.PathLike[str]) -> ModelSource:
    """Resolve a model name to a local folder (converting or downloading if needed).

    Args:
        name_or_path: A local folder, an alias such as ``"smollm2-135m-instruct"``, or a
            hub id such as ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` (``@revision`` optional).

    Returns:
        Where the files are.

    Raises:
        UnknownModelError: The name is none of the three; the message lists the aliases.
        ModelNotAvailableError: Known, but its files cannot be had here.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return _local_source(name, path)
    if name.lower() in ALIASES:
        alias = get_alias(name)
        return ModelSource(name=name, kind="alias", path=ensure_converted(alias))
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(name):
        raise ModelNotAvailableError(f"model folder {name!r} does not exist")
    repo_id, _, revision = name.partition("@")
    if _HUB_ID.fullmatch(repo_id):
        folder = _hub_snapshot(repo_id, revision or None)
        return ModelSource(name=name, kind="hub", path=folder, revision=revision or None)
    known = ", ".join(sorted(ALIASES))
    raise UnknownModelError(
        f"unknown model {name!r}: not a local folder, not an alias ({known}) and not a "
        "Hugging Face hub id like 'org/name'"
    )


def _local_source(name: str, path: Path) -> ModelSource:
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(
            f"model folder {str(path)!r} has no config.json; expected a Hugging Face model "
            "folder (config.json, *.safetensors, tokenizer files)"
        )
    return ModelSource(name=name, kind="local", path=path.resolve())


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hub_cache_dir(),
            allow_patterns=_HUB_PATTERNS,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as exc:
        where = "in the local hub cache" if offline else "in the cache nor on the hub"
        raise ModelNotAvailableError(
            f"hub model {repo_id!r} (revision {revision or 'main'}) is not {where} "
            f"({hub_cache_dir()}); download it on a connected machine or unset HF_HUB_OFFLINE"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelNotAvailableError(f"hub model {repo_id!r} could not be fetched: {exc}") from exc
    return Path(str(folder))
