"""``StudioConfig``: where the Studio keeps its files and where it listens."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from openledger.exceptions import ConfigError

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "StudioConfig", "is_loopback"]

DEFAULT_MAX_UPLOAD_BYTES = 8 * 1024 * 1024
"""Largest contributions file the Datanets tab accepts (8 MiB)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class StudioConfig:
    """Settings of the Studio web app (the ``openledger studio`` command).

    Attributes:
        home: Folder of the Studio's work: ``datanets/``, ``adapters/``, ``accounts/`` and
            ``models/`` (local base-model folders offered in the Train tab). The same
            folders the SDK reads, so a notebook can open what the Studio made.
        host: Address to listen on; only loopback unless ``allow_remote``.
        port: TCP port.
        allow_remote: Allow a non-loopback ``host``. The Studio has no login: anyone who
            reaches it can use every local account's key.
        max_upload_bytes: Largest contributions file accepted.
        chain_url: JSON-RPC URL of an EVM node; None for the embedded py-evm chain (its
            state lives as long as the Studio process).
    """

    home: Path = Path("openledger-studio")
    host: str = "127.0.0.1"
    port: int = 7860
    allow_remote: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    chain_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(os.path.expanduser(self.home)))
        if not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(
                f"host {self.host!r} is reachable from other machines and the Studio has no "
                "login; use 127.0.0.1, or pass --allow-remote if you really mean it"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be within 0..65535, got {self.port}")
        if self.max_upload_bytes < 1:
            raise ConfigError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
