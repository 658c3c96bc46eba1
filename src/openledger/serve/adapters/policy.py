"""The rules adapter sources are fetched under (:class:`AdapterSourcePolicy`), and the
form of a pinned sha256."""

from __future__ import annotations

import re
from dataclasses import dataclass

from openledger.exceptions import AdapterSourceError, ConfigError

__all__ = ["AdapterSourcePolicy", "check_sha256"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


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
