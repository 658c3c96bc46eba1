"""Which URLs and network addresses an adapter download may reach.

::

    check_url()       https only; no loopback, private, link-local or metadata address
                      (http and loopback only when AdapterSourcePolicy.allow_loopback)
    guarded_client()  the default client: it connects only to addresses the rules allow,
                      checked after name resolution, so a name that resolves to
                      169.254.169.254 is refused as the literal would be
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from openledger.exceptions import AdapterSourceError
from openledger.serve.adapters.policy import AdapterSourcePolicy

__all__ = [
    "Address",
    "address_refusal",
    "allowed_address",
    "check_url",
    "guarded_client",
    "literal_address",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    address = literal_address(host)
    if host == "localhost" or host.endswith(".localhost"):
        address = ipaddress.IPv4Address("127.0.0.1")
    if address is not None:
        refusal = address_refusal(address, policy)
        if refusal:
            raise AdapterSourceError(f"adapter URL {parsed} points to {refusal}")
    loopback = address is not None and address.is_loopback
    if parsed.scheme == "http" and not loopback:
        raise AdapterSourceError(f"adapter URL {parsed} is plain http; use https")
    return parsed


def literal_address(host: str) -> Address | None:
    """The address ``host`` spells (IPv4 in any form the resolver takes, IPv6, an
    IPv4-mapped IPv6 as its IPv4), or None for a name."""
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


def address_refusal(address: Address, policy: AdapterSourcePolicy) -> str | None:
    """Why ``address`` may not be reached, or None when it may."""
    if address.is_loopback:
        if policy.allow_loopback:
            return None
        return f"the loopback address {address} (allowed only with allow_loopback, for tests)"
    if not address.is_global:
        return f"the non-public address {address} (private, link-local or metadata)"
    return None


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


def allowed_address(host: str, port: int, policy: AdapterSourcePolicy) -> Address:
    """Resolve ``host``; the first address, when every address it has is allowed.

    Raises:
        AdapterSourceError: Some address of ``host`` is refused by ``policy``.
        httpcore.ConnectError: The name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses = [literal_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        refusal = "an unparsable address" if address is None else address_refusal(address, policy)
        if refusal:
            raise AdapterSourceError(f"adapter host {host} resolves to {refusal}")
    first = addresses[0]
    if first is None:  # NOTE: unreachable: refused above
        raise AdapterSourceError(f"adapter host {host} has no address")
    return first
