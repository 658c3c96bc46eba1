"""The Studio's folder: local accounts, datanets, adapters and base-model folders.

::

    HOME/
      accounts/NAME.json     {"address": ..., "key": ...}  (0600; dev keys, not a wallet)
      datanets/NAME/         Datanet folders (openledger.data)
      adapters/NAME/         adapter folders (openledger.train), finished runs only
      adapters/.staging/     runs in progress; moved into place only when complete
      models/NAME/           local base-model folders offered besides the aliases
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openledger.crypto import Account
from openledger.exceptions import ConfigError, DataNotFoundError, ManifestError, StoreError

__all__ = ["Workspace", "check_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it can name a folder, else raise naming ``what``.

    Raises:
        ConfigError: Not 1-64 letters, digits, ``_``, ``.`` or ``-`` (first a letter or digit).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{what} name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class Workspace:
    """Finds and creates what the Studio works on inside its home folder.

    Args:
        home: The Studio's folder (created if missing).
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        for sub in ("accounts", "datanets", "adapters", "models"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        # NOTE: one writer at a time across request threads (a Datanet is not thread-safe).
        self.lock = threading.RLock()

    @property
    def datanets_dir(self) -> Path:
        """Folder of the datanets."""
        return self.home / "datanets"

    @property
    def adapters_dir(self) -> Path:
        """Folder of the finished adapters."""
        return self.home / "adapters"

    @property
    def staging_dir(self) -> Path:
        """Folder of training runs in progress."""
        return self.adapters_dir / ".staging"

    # -- accounts ----------------------------------------------------------------------------

    def accounts(self) -> dict[str, Account]:
        """Local accounts by name."""
        found: dict[str, Account] = {}
        for path in sorted((self.home / "accounts").glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            found[path.stem] = Account.from_key(data["key"])
        return found

    def account(self, name: str) -> Account:
        """The local account called ``name``.

        Raises:
            DataNotFoundError: No such account.
        """
        path = self.home / "accounts" / f"{check_name(name, 'account')}.json"
        if not path.is_file():
            raise DataNotFoundError(f"no local account called {name!r}; create it first")
        return Account.from_key(json.loads(path.read_text(encoding="utf-8"))["key"])

    def create_account(self, name: str) -> Account:
        """Create a new local account (a fresh key in ``accounts/NAME.json``, mode 0600).

        Raises:
            ConfigError: A bad or taken name.
        """
        path = self.home / "accounts" / f"{check_name(name, 'account')}.json"
        account = Account.create()
        body = json.dumps({"address": account.address, "key": "0x" + account.key.hex()})
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"an account called {name!r} exists already") from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
        return account

    def names_by_address(self) -> dict[str, str]:
        """Local account names by address."""
        return {account.address: name for name, account in self.accounts().items()}

    # -- datanets ----------------------------------------------------------------------------

    def datanet_names(self) -> list[str]:
        """Names of the datanets in the workspace."""
        return sorted(
            p.name for p in self.datanets_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    @contextmanager
    def open_datanet(self, name: str) -> Iterator[Any]:
        """Open the datanet called ``name`` for the duration of a ``with`` block.

        Raises:
            DataNotFoundError: No such datanet.
        """
        from openledger.data import Datanet

        folder = self.datanets_dir / check_name(name, "datanet")
        if not folder.is_dir():
            raise DataNotFoundError(f"no datanet called {name!r}")
        datanet = Datanet.open(folder)
        try:
            yield datanet
        finally:
            datanet.close()

    def datanet_for(self, datanet_id: str) -> str:
        """The name of the workspace datanet whose id is ``datanet_id``.

        Raises:
            DataNotFoundError: No datanet here has that id.
        """
        for name in self.datanet_names():
            try:
                with self.open_datanet(name) as datanet:
                    if datanet.id == datanet_id:
                        return name
            except StoreError:
                continue
        raise DataNotFoundError(f"no datanet in {self.datanets_dir} has the id {datanet_id}")

    # -- adapters and base models ------------------------------------------------------------

    def adapter_names(self) -> list[str]:
        """Names of the finished adapters."""
        return sorted(
            p.name
            for p in self.adapters_dir.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and (p / "openledger_manifest.json").is_file()
        )

    def adapter(self, name: str) -> Any:
        """Open the adapter called ``name`` (an :class:`openledger.train.Adapter`).

        Raises:
            DataNotFoundError: No such adapter.
            ManifestError: Its files do not match its manifest.
        """
        from openledger.train import Adapter

        folder = self.adapters_dir / check_name(name, "adapter")
        if not folder.is_dir():
            raise DataNotFoundError(f"no adapter called {name!r}")
        try:
            return Adapter.open(folder)
        except FileNotFoundError:
            raise ManifestError(f"{folder} is not a complete adapter folder") from None

    def base_models(self) -> list[dict[str, str]]:
        """Base models to offer: local folders under ``models/`` first, then the aliases."""
        from openledger.models import list_models

        found = [
            {"value": str(p.resolve()), "label": f"{p.name} (local folder)"}
            for p in sorted((self.home / "models").iterdir())
            if (p / "config.json").is_file()
        ]
        for row in list_models():
            state = "ready" if row.cached else ("installed" if row.installed else "not installed")
            found.append({"value": row.name, "label": f"{row.name} ({row.kind}, {state})"})
        return found
