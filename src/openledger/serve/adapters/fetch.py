"""Downloading adapter archives under rules that hold for every hop.

::

    check_url()       https only; no loopback, private, link-local or metadata address
                      (http and loopback only when AdapterSourcePolicy.allow_loopback)
    guarded_client()  the default client: it connects only to addresses the rules allow,
                      checked after name resolution, so a name that resolves to
                      169.254.169.254 is refused as the literal would be
    download()        redirects followed by hand, each target re-checked; the body is
                      streamed to a file under a byte cap and one overall deadline, and its
                      sha256 compared with the pinned one before the file is used

Adapter names reach the engine from users (through the gateway), so every rule is on by
default; only tests turn loopback on, to reach a server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx

from openledger.exceptions import AdapterNotFoundError, AdapterSourceError, ConfigError

__all__ = ["AdapterSourcePolicy", "check_url", "download", "guarded_client"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class AdapterSourcePolicy:
    """The rules adapter sources are fetched under.

    Attributes:
        allow_loopback: Let URLs reach 127.0.0.0/8, ``::1`` and ``localhost``, over http
            as well as https. For tests against a local server; never on by default.
            Private, link-local and metadata addresses stay refused even then.
        require_pinned: Refuse archive URLs without an expected sha256 and ``hf://``
            sources without a full 40-hex commit revision.
        max_download_bytes: Most bytes one archive may have (4 GiB).
        max_unpacked_bytes: Most bytes its members may unpack to (8 GiB).
        max_members: Most members one archive may hold.
        download_timeout_s: Deadline for one whole download, redirects included.
        read_timeout_s: Longest wait for any single connect or read (within the deadline).
        max_redirects: Most redirects followed for one download.
    """

    allow_loopback: bool = False
    require_pinned: bool = False
    max_download_bytes: int = 4 << 30
    max_unpacked_bytes: int = 8 << 30
    max_members: int = 1_000
    download_timeout_s: float = 600.0
    read_timeout_s: float = 30.0
    max_redirects: int = 5

    def __post_init__(self) -> None:
        for field in ("max_download_bytes", "max_unpacked_bytes", "max_members"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"AdapterSourcePolicy.{field} must be an int >= 1: {value!r}")
        for field in ("download_timeout_s", "read_timeout_s"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"AdapterSourcePolicy.{field} must be > 0 seconds: {value!r}")
        if not isinstance(self.max_redirects, int) or self.max_redirects < 0:
            raise ConfigError(
                f"AdapterSourcePolicy.max_redirects must be >= 0: {self.max_redirects!r}"
            )


def check_sha256(value: str | None) -> str | None:
    """``value`` as 64 lowercase hex digits (or None).

    Raises:
        AdapterSourceError: Not a sha256 hex digest.
    """
    if value is None:
        return None
    digest = value.lower().removeprefix("0x") if isinstance(value, str) else ""
    if not _SHA256.fullmatch(digest):
        raise AdapterSourceError(f"expected sha256 must be 64 hex digits, got {value!r}")
    return digest


def check_url(url: str | httpx.URL, policy: AdapterSourcePolicy) -> httpx.URL:
    """Parse ``url`` and check its scheme and (literal) host against ``policy``.

    Host names are checked again at connect time by :func:`guarded_client`.

    Raises:
        AdapterSourceError: Not https (or http to loopback when allowed), or a host that
            is a loopback, private, link-local or metadata address.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise AdapterSourceError(f"adapter URL {str(url)!r} is malformed: {exc}") from exc
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise AdapterSourceError(f"adapter URL {parsed} must be https://host/...")
    host = parsed.host.lower()
    address = _literal_address(host)
    if host == "localhost" or host.endswith(".localhost"):
        address = ipaddress.IPv4Address("127.0.0.1")
    if address is not None:
        refusal = _refusal(address, policy)
        if refusal:
            raise AdapterSourceError(f"adapter URL {parsed} points to {refusal}")
    loopback = address is not None and address.is_loopback
    if parsed.scheme == "http" and not loopback:
        raise AdapterSourceError(f"adapter URL {parsed} is plain http; use https")
    return parsed


def _literal_address(host: str) -> _Address | None:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not re.fullmatch(r"[0-9a-fx.]+", host):
            return None
        try:  # NOTE: "2130706433", "0x7f.1" and "127.1" are 127.0.0.1 to the resolver
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _refusal(address: _Address, policy: AdapterSourcePolicy) -> str | None:
    """Why ``address`` may not be reached, or None when it may."""
    if address.is_loopback:
        if policy.allow_loopback:
            return None
        return f"the loopback address {address} (allowed only with allow_loopback, for tests)"
    if not address.is_global:
        return f"the non-public address {address} (private, link-local or metadata)"
    return None


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


def guarded_client(policy: AdapterSourcePolicy) -> httpx.Client:
    """An httpx client whose connections reach only addresses ``policy`` allows.

    Proxies from the environment are ignored (the check must see the real peer); inject
    your own client into the store to go through a proxy.
    """
    transport = httpx.HTTPTransport(trust_env=False)
    # NOTE: httpx takes no network backend; the pool is rebuilt around one that checks
    # each resolved address before it connects (closing DNS-rebinding and redirect tricks).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=_GuardedBackend(policy),
        max_connections=4,
    )
    return httpx.Client(transport=transport, trust_env=False, follow_redirects=False)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves a host, refuses it if any address is refused, connects to a checked one."""

    def __init__(self, policy: AdapterSourcePolicy) -> None:
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        address = allowed_address(host, port, self._policy)
        return self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise AdapterSourceError(f"adapter downloads do not use unix sockets ({path})")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def allowed_address(host: str, port: int, policy: AdapterSourcePolicy) -> _Address:
    """Resolve ``host``; the first address, when every address it has is allowed.

    Raises:
        AdapterSourceError: Some address of ``host`` is refused by ``policy``.
        httpcore.ConnectError: The name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses = [_literal_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        refusal = "an unparsable address" if address is None else _refusal(address, policy)
        if refusal:
            raise AdapterSourceError(f"adapter host {host} resolves to {refusal}")
    first = addresses[0]
    if first is None:  # NOTE: unreachable: refused above
        raise AdapterSourceError(f"adapter host {host} has no address")
    return first
