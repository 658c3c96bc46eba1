"""The converted-model cache under ``OPENLEDGER_HOME``.

Layout::

    $OPENLEDGER_HOME/                      default ~/.cache/openledger
      models/
        smollm2-135m-instruct/             a Hugging Face folder: config.json,
          model.safetensors ...            model.safetensors, tokenizer files
          openledger_cache.json            what was converted from what, with the
                                           size and sha256 of every file
        .smollm2-135m-instruct.lock        held while converting

A folder is used only when every file listed in ``openledger_cache.json`` is there with
its recorded size and sha256; anything else (a crash mid-conversion, a truncated or edited
file, another package version) is converted again. Conversion writes into a temporary
sibling folder and renames it into place, so readers never see half a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from openledger._version import __version__
from openledger.exceptions import ModelCacheError
from openledger.models.aliases import OfflineModel

__all__ = [
    "CACHE_MANIFEST",
    "cache_dir",
    "cache_problem",
    "ensure_converted",
    "openledger_home",
]

logger = logging.getLogger(__name__)

CACHE_MANIFEST = "openledger_cache.json"
"""File name of the manifest written beside a converted model."""

_FORMAT_VERSION = 1
_CHUNK = 1 << 24
# NOTE: memo of files already hashed in this process, keyed by identity and mtime, so a
# second load of the same unchanged cache does not hash 0.5 GB again.
_verified: set[tuple[str, int, int, int]] = set()


def openledger_home() -> Path:
    """Return the root of openledger's caches: ``$OPENLEDGER_HOME`` or ``~/.cache/openledger``."""
    env = os.environ.get("OPENLEDGER_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "openledger"


def cache_dir(alias: OfflineModel) -> Path:
    """Return the folder where ``alias`` is (or will be) converted."""
    return openledger_home() / "models" / alias.name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_problem(folder: Path, name: str, expected: dict[str, Any]) -> str | None:
    path = folder / name
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"{name} is missing"
    if stat.st_size != expected.get("size"):
        return f"{name} has {stat.st_size} bytes, expected {expected.get('size')}"
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return None
    if _sha256(path) != expected.get("sha256"):
        return f"{name} does not match its recorded sha256"
    _verified.add(key)
    return None


def _read_manifest(folder: Path) -> dict[str, Any] | str:
    try:
        manifest = json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{CACHE_MANIFEST} is missing (conversion never finished)"
    except (OSError, ValueError) as exc:
        return f"{CACHE_MANIFEST} is unreadable ({exc})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return f"{CACHE_MANIFEST} has no file list"
    return manifest


def cache_problem(alias: OfflineModel, folder: Path | None = None) -> str | None:
    """Say what is wrong with a converted cache, or ``None`` when it is sound.

    Every file is checked against its recorded size and sha256 (hashing is skipped for
    files already verified unchanged in this process).

    Args:
        alias: The model the cache should hold.
        folder: The cache folder; defaults to :func:`cache_dir`.

    Returns:
        A short human-readable reason, or ``None``.
    """
    folder = folder or cache_dir(alias)
    if not folder.is_dir():
        return "not converted yet"
    manifest = _read_manifest(folder)
    if isinstance(manifest, str):
        return manifest
    if manifest.get("format_version") != _FORMAT_VERSION:
        return f"cache format {manifest.get('format_version')} != {_FORMAT_VERSION}"
    source = manifest.get("source", {})
    if (source.get("package"), source.get("gguf_file")) != (alias.package, alias.gguf_file):
        return "cache was converted from another source"
    installed = alias.find_gguf()
    if installed is not None and installed.stat().st_size != source.get("gguf_size"):
        return "the installed model package differs from the one converted"
    for name, expected in sorted(manifest["files"].items()):
        problem = _file_problem(folder, name, expected)
        if problem:
            return problem
    return None


def ensure_converted(alias: OfflineModel, *, force: bool = False) -> Path:
    """Return a sound converted cache of ``alias``, converting it first if needed.

    Safe to call from several processes at once: one converts while the others wait.

    Args:
        alias: The offline model.
        force: Convert again even when the cache is sound.

    Returns:
        The cache folder, loadable with ``from_pretrained``.

    Raises:
        ModelNotAvailableError: If the cache is unusable and the package is not installed.
        ModelCacheError: If conversion itself fails.
    """
    folder = cache_dir(alias)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{alias.name}.lock")):
        problem = "conversion forced" if force else cache_problem(alias, folder)
        if problem is None:
            return folder
        if folder.exists():
            logger.warning("converting %s again: %s", alias.name, problem)
        gguf = alias.require_gguf()
        _convert(alias, gguf, folder)
    return folder


def _convert(alias: OfflineModel, gguf: Path, folder: Path) -> None:
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_hf_folder(gguf, tmp)
        _write_manifest(alias, gguf, tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelCacheError(f"converting {alias.name} from {gguf} failed: {exc}") from exc
    _verified.clear()
    logger.info("converted %s into %s", alias.name, folder)


def _write_hf_folder(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # NOTE: transformers refuses save_pretrained on a GGUF-loaded model; a fresh model
    # built from the same config minus quantization_config takes its dequantized weights.
    config_dict = source.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(source.config).from_dict(config_dict)
    target = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    target.load_state_dict(source.state_dict(), strict=True)
    target.generation_config = source.generation_config
    out.mkdir(parents=True)
    target.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    logger.info("GGUF -> safetensors in %.1f s", time.perf_counter() - started)


def _write_manifest(alias: OfflineModel, gguf: Path, folder: Path) -> None:
    files = {
        path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file()
    }
    manifest = {
        "format_version": _FORMAT_VERSION,
        "alias": alias.name,
        "source": {
            "package": alias.package,
            "version": alias.version,
            "gguf_file": alias.gguf_file,
            "gguf_size": gguf.stat().st_size,
            "hub_id": alias.hub_id,
        },
        "files": files,
        "converted_by": f"openledger {__version__}",
        "converted_at": int(time.time()),
    }
    (folder / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
