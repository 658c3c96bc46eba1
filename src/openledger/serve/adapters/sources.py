"""Where an adapter comes from: a local folder, ``hf://org/repo[@revision]`` or an archive URL.

Every source ends as a local folder holding ``adapter_config.json``; nothing is read
from it here (see :mod:`.loading`).

* Hub repositories go through ``huggingface_hub`` and its own cache (``HF_HOME``,
  ``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` only that cache is consulted.
* ``https://`` (or ``http://``) URLs point to a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip``
  archive. It is downloaded once with httpx into ``cache_dir/<sha256 of the URL>`` and
  unpacked there; members that would land outside that folder, links and devices are
  refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import httpx

from openledger.exceptions import AdapterFormatError, AdapterNotFoundError

__all__ = ["ADAPTER_CONFIG_FILE", "resolve_source"]

ADAPTER_CONFIG_FILE = "adapter_config.json"
_HUB_PATTERNS = ["adapter_config.json", "*.safetensors", "*.bin", "openledger_manifest.json"]
_MAX_ARCHIVE_BYTES = 4 << 30


def resolve_source(
    source: str | os.PathLike[str],
    cache_dir: Path,
    *,
    http_client: httpx.Client | None = None,
) -> Path:
    """Turn a source into a local adapter folder.

    Args:
        source: A folder, ``hf://org/repo`` or ``hf://org/repo@revision``, or an archive URL.
        cache_dir: Where downloaded archives are kept (hub files stay in the hub cache).
        http_client: Client for URLs (tests inject a ``MockTransport``); a fresh one if None.

    Returns:
        The folder holding ``adapter_config.json``.

    Raises:
        AdapterNotFoundError: The folder, repository, revision or URL cannot be had.
        AdapterFormatError: The archive is unreadable, unsafe, or holds no adapter.
    """
    text = os.fspath(source)
    if text.startswith("hf://"):
        return _from_hub(text[len("hf://") :])
    if text.startswith(("https://", "http://")):
        return _from_url(text, cache_dir / "urls", http_client)
    return _adapter_folder(Path(text), text)


def _adapter_folder(root: Path, source: str) -> Path:
    if not root.is_dir():
        raise AdapterNotFoundError(f"adapter source {source!r} is no folder, hf:// repo or URL")
    if (root / ADAPTER_CONFIG_FILE).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(ADAPTER_CONFIG_FILE))
    if len(found) != 1:
        raise AdapterFormatError(
            f"{source!r} holds {len(found)} {ADAPTER_CONFIG_FILE} files; expected exactly one "
            "(a PEFT adapter folder)"
        )
    return found[0]


def _from_hub(spec: str) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1:
        raise AdapterNotFoundError(f"hf:// source must be hf://org/repo[@revision], got {spec!r}")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            allow_patterns=_HUB_PATTERNS,
            local_files_only=bool(constants.HF_HUB_OFFLINE),
        )
    except (OSError, HFValidationError, ValueError) as exc:
        offline = " (offline: only the hub cache was searched)" if constants.HF_HUB_OFFLINE else ""
        raise AdapterNotFoundError(f"cannot get hf://{spec}{offline}: {exc}") from exc
    return _adapter_folder(Path(folder), f"hf://{spec}")


def _from_url(url: str, cache_dir: Path, client: httpx.Client | None) -> Path:
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:32]
    if not (target / ".complete").is_file():
        data = _download(url, client)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        _unpack(data, url, target)
        (target / ".complete").touch()
    return _adapter_folder(target, url)


def _download(url: str, client: httpx.Client | None) -> bytes:
    own = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=60.0)
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        raise AdapterNotFoundError(f"cannot download {url}: {exc}") from exc
    finally:
        if own:
            http.close()
    if response.status_code != 200:
        raise AdapterNotFoundError(f"downloading {url} gave HTTP {response.status_code}")
    if len(response.content) > _MAX_ARCHIVE_BYTES:
        raise AdapterFormatError(f"{url} is larger than {_MAX_ARCHIVE_BYTES} bytes")
    return response.content


def _unpack(data: bytes, url: str, target: Path) -> None:
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            _unpack_zip(data, target)
        else:
            _unpack_tar(data, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise AdapterFormatError(f"{url} is no readable .tar(.gz) or .zip archive: {exc}") from exc


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise AdapterFormatError(f"archive member {name!r} would land outside its folder")
    return path


def _unpack_zip(data: bytes, target: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            path = target / _safe_member(info.filename)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(info))


def _unpack_tar(data: bytes, target: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        for member in archive.getmembers():
            path = target / _safe_member(member.name)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(handle.read())
            else:
                raise AdapterFormatError(f"archive member {member.name!r} is a link or device")
