"""Downloading adapter archives under rules that hold for every hop.

::

    download()        redirects followed by hand, each target re-checked
                      (:func:`~openledger.serve.adapters.addresses.check_url`); the body is
                      streamed to a file under a byte cap and one overall deadline, and its
                      sha256 compared with the pinned one before the file is used

Adapter names reach the engine from users (through the gateway), so every rule is on by
default; only tests turn loopback on, to reach a server on 127.0.0.1. The rules are
:class:`~openledger.serve.adapters.policy.AdapterSourcePolicy`; the addresses a download
may reach, :mod:`~openledger.serve.adapters.addresses` (both re-exported here).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from openledger.exceptions import AdapterNotFoundError, AdapterSourceError
from openledger.serve.adapters.addresses import allowed_address, check_url, guarded_client
from openledger.serve.adapters.policy import AdapterSourcePolicy, check_sha256

__all__ = [
    "AdapterSourcePolicy",
    "allowed_address",
    "check_sha256",
    "check_url",
    "download",
    "guarded_client",
]


def download(
    url: str,
    dest: Path,
    policy: AdapterSourcePolicy,
    client: httpx.Client,
    sha256: str | None = None,
) -> str:
    """Stream ``url`` into ``dest``; redirects are followed by hand and re-checked.

    Args:
        url: The archive URL.
        dest: File to write (created or truncated).
        policy: Caps, deadline and address rules.
        client: The client to use (:func:`guarded_client` unless a test injects one).
        sha256: Expected sha256 of the body, 64 hex digits; checked before returning.

    Returns:
        The body's sha256 as hex.

    Raises:
        AdapterSourceError: A rule is broken (see :class:`AdapterSourcePolicy`) or the
            body is not the expected sha256.
        AdapterNotFoundError: The server cannot be reached or answers no 200.
    """
    deadline = time.monotonic() + policy.download_timeout_s
    current = check_url(url, policy)
    for _ in range(policy.max_redirects + 1):
        target = _fetch(client, current, dest, policy, deadline)
        if target is None:
            digest = _sha256_of(dest)
            if sha256 is not None and digest != sha256:
                raise AdapterSourceError(
                    f"{url} has sha256 {digest}, not the expected {sha256}; the archive "
                    "changed or the pin is wrong"
                )
            return digest
        current = _redirect(current, target, policy)
    raise AdapterSourceError(f"{url} redirected more than {policy.max_redirects} times")


def _redirect(current: httpx.URL, location: str, policy: AdapterSourcePolicy) -> httpx.URL:
    target = check_url(current.join(location), policy)
    if current.scheme == "https" and target.scheme != "https":
        raise AdapterSourceError(f"{current} redirects to {target}: https may not become http")
    return target


def _fetch(
    client: httpx.Client, url: httpx.URL, dest: Path, policy: AdapterSourcePolicy, deadline: float
) -> str | None:
    """Write the body of ``url`` to ``dest``, or return a redirect's Location."""
    timeout = httpx.Timeout(min(policy.read_timeout_s, _left(deadline, url, policy)))
    headers = {"Accept-Encoding": "identity"}
    try:
        with client.stream(
            "GET", url, headers=headers, timeout=timeout, follow_redirects=False
        ) as response:
            if response.is_redirect and "location" in response.headers:
                return response.headers["location"]
            if response.status_code != 200:
                raise AdapterNotFoundError(f"downloading {url} gave HTTP {response.status_code}")
            _check_length(response, url, policy)
            _write_body(response.iter_bytes(), dest, url, policy, deadline)
    except httpx.TimeoutException as exc:
        raise AdapterSourceError(f"{url} sent nothing for {timeout.read} s: {exc}") from exc
    except httpx.HTTPError as exc:
        raise AdapterNotFoundError(f"cannot download {url}: {exc}") from exc
    return None


def _check_length(response: httpx.Response, url: httpx.URL, policy: AdapterSourcePolicy) -> None:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_download_bytes:
        raise AdapterSourceError(
            f"{url} declares {declared} bytes, over AdapterSourcePolicy.max_download_bytes="
            f"{policy.max_download_bytes}"
        )


def _write_body(
    chunks: Iterable[bytes],
    dest: Path,
    url: httpx.URL,
    policy: AdapterSourcePolicy,
    deadline: float,
) -> None:
    total = 0
    with open(dest, "wb") as out:
        for chunk in chunks:
            total += len(chunk)
            if total > policy.max_download_bytes:
                raise AdapterSourceError(
                    f"{url} is larger than AdapterSourcePolicy.max_download_bytes="
                    f"{policy.max_download_bytes}; the download was stopped"
                )
            _left(deadline, url, policy)
            out.write(chunk)


def _left(deadline: float, url: httpx.URL, policy: AdapterSourcePolicy) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise AdapterSourceError(
            f"downloading {url} took longer than AdapterSourcePolicy.download_timeout_s="
            f"{policy.download_timeout_s}; the download was stopped"
        )
    return left


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
