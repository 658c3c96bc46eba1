"""Where an adapter comes from: a local folder, ``hf://org/repo[@revision]`` or an archive URL.

Every source ends as a local folder holding ``adapter_config.json``; nothing is read
from it here (see :mod:`.loading`).

* Hub repositories go through ``huggingface_hub`` and its own cache (``HF_HOME``,
  ``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` only that cache is consulted. A full
  40-hex commit revision pins the files: the folder served must be that commit's.
* ``https://`` URLs point to a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive, pinned
  by an optional sha256 (the ``sha256`` argument or a ``#sha256=<hex>`` fragment). It is
  fetched under :class:`~.fetch.AdapterSourcePolicy` (https only, no private addresses,
  byte cap, deadline) and unpacked under its caps (see :mod:`.archives`).

A cache entry appears whole or not at all::

    cache_dir/<key>/                 finished entries (key: sha256 of URL and pin)
    cache_dir/.partial-<key>-*/      a download in progress, renamed when complete
    cache_dir/.locks/<key>.lock      one resolver per key at a time, across processes

The archive is downloaded and unpacked inside a ``.partial`` folder, checked, then
renamed to its key. A resolver that waited on the lock finds the winner's entry and uses
it; nothing ever deletes a finished entry, and a refused source leaves only its (empty)
lock file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

from openledger.exceptions import AdapterFormatError, AdapterNotFoundError, AdapterSourceError
from openledger.serve.adapters.addresses import check_url, guarded_client
from openledger.serve.adapters.archives import unpack_archive
from openledger.serve.adapters.fetch import download
from openledger.serve.adapters.policy import AdapterSourcePolicy, check_sha256

__all__ = ["ADAPTER_CONFIG_FILE", "resolve_source"]

ADAPTER_CONFIG_FILE = "adapter_config.json"
_HUB_PATTERNS = ["adapter_config.json", "*.safetensors", "*.bin", "openledger_manifest.json"]
_COMMIT = re.compile(r"[0-9a-f]{40}")


def resolve_source(
    source: str | os.PathLike[str],
    cache_dir: Path,
    *,
    http_client: httpx.Client | None = None,
    policy: AdapterSourcePolicy | None = None,
    sha256: str | None = None,
    check: Callable[[Path], object] | None = None,
) -> Path:
    """Turn a source into a local adapter folder.

    Args:
        source: A folder, ``hf://org/repo`` or ``hf://org/repo@revision``, or an archive
            URL (optionally ending in ``#sha256=<hex>``).
        cache_dir: Where downloaded archives are unpacked (hub files stay in the hub cache).
        http_client: Client for URLs (tests inject a ``MockTransport``); when None, one
            that connects only to addresses ``policy`` allows.
        policy: Download rules; the defaults when None.
        sha256: Expected sha256 of the archive (URLs only).
        check: Called on a downloaded adapter folder before it enters the cache; what
            it raises refuses the source and nothing is cached.

    Returns:
        The folder holding ``adapter_config.json``.

    Raises:
        AdapterNotFoundError: The folder, repository, revision or URL cannot be had.
        AdapterSourceError: The source breaks ``policy`` or is not the pinned content.
        AdapterFormatError: The archive is unreadable, unsafe, or holds no adapter.
    """
    policy = policy or AdapterSourcePolicy()
    text = os.fspath(source)
    if text.startswith(("https://", "http://")):
        url, _, fragment = text.partition("#")
        pin = _pin(url, fragment, sha256, policy)
        return _from_url(url, cache_dir / "urls", http_client, policy, pin, check)
    if sha256 is not None:
        raise AdapterSourceError(
            f"sha256 pins archive URLs; {text!r} is none (pin hub sources as hf://org/repo@<commit>)"
        )
    if text.startswith("hf://"):
        return _from_hub(text[len("hf://") :], policy)
    return _adapter_folder(Path(text), text)


def _pin(url: str, fragment: str, sha256: str | None, policy: AdapterSourcePolicy) -> str | None:
    if fragment and not fragment.startswith("sha256="):
        raise AdapterSourceError(f"{url}: the only URL fragment understood is #sha256=<hex>")
    pins = {p for p in (check_sha256(sha256), check_sha256(fragment[7:] or None)) if p}
    if len(pins) > 1:
        raise AdapterSourceError(f"{url}: the sha256 argument and the #sha256= fragment differ")
    if not pins and policy.require_pinned:
        raise AdapterSourceError(
            f"{url} has no expected sha256 and AdapterSourcePolicy.require_pinned is set; "
            "pass sha256= or end the URL with #sha256=<hex>"
        )
    return pins.pop() if pins else None


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


def _from_hub(spec: str, policy: AdapterSourcePolicy) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1:
        raise AdapterNotFoundError(f"hf:// source must be hf://org/repo[@revision], got {spec!r}")
    pinned = _COMMIT.fullmatch(revision) is not None
    if policy.require_pinned and not pinned:
        raise AdapterSourceError(
            f"hf://{spec} names no commit and AdapterSourcePolicy.require_pinned is set; "
            "use hf://org/repo@<40-hex commit>"
        )
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
    if pinned and Path(folder).name != revision:
        raise AdapterSourceError(
            f"hf://{spec} resolved to snapshot {Path(folder).name}, not the pinned commit"
        )
    return _adapter_folder(Path(folder), f"hf://{spec}")


def _from_url(
    url: str,
    cache_dir: Path,
    client: httpx.Client | None,
    policy: AdapterSourcePolicy,
    sha256: str | None,
    check: Callable[[Path], object] | None,
) -> Path:
    check_url(url, policy)  # NOTE: refused before anything touches the disk
    key = hashlib.sha256(f"{url}\n{sha256 or ''}".encode()).hexdigest()[:32]
    entry = cache_dir / key
    if not entry.is_dir():
        locks = cache_dir / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        wait = policy.download_timeout_s + 60.0
        try:
            with FileLock(locks / f"{key}.lock", timeout=wait):
                if not entry.is_dir():  # NOTE: the lock's last holder may have made it
                    _fill(entry, url, client, policy, sha256, check)
        except Timeout as exc:
            raise AdapterNotFoundError(
                f"another resolver has been downloading {url} for over {wait:.0f} s"
            ) from exc
    return _adapter_folder(entry, url)


def _fill(
    entry: Path,
    url: str,
    client: httpx.Client | None,
    policy: AdapterSourcePolicy,
    sha256: str | None,
    check: Callable[[Path], object] | None,
) -> None:
    """Download, unpack and check into a ``.partial`` folder, then rename it to ``entry``."""
    prefix = f".partial-{entry.name}-"
    for stale in entry.parent.glob(
        f"{prefix}*"
    ):  # NOTE: left by a killed resolver; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=entry.parent))
    try:
        archive, unpacked = staging / "archive", staging / "adapter"
        http = client or guarded_client(policy)
        try:
            download(url, archive, policy, http, sha256)
        finally:
            if client is None:
                http.close()
        unpacked.mkdir()
        unpack_archive(archive, unpacked, policy, url)
        folder = _adapter_folder(unpacked, url)  # NOTE: refused archives are never cached
        if check is not None:
            check(folder)
        os.replace(unpacked, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
