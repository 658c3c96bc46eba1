"""The datanets one service hosts, and how a request reaches one of them.

A :class:`~openledger.data.Datanet` handle is not thread-safe, so each hosted datanet has
one handle and a lock: requests to it take turns in this process (its writes take turns
across processes anyway, in the store). Run more processes for more throughput; each opens
its own handles, and the store keeps them consistent.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from openledger.data import AccessGrant, Datanet
from openledger.data.remote_signing import CALL_TTL, SignedCall
from openledger.data.schemas import schema_hash, schema_ref
from openledger.data.store import Durability
from openledger.exceptions import ConfigError, DataNotFoundError, NonceError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DatanetService", "HostedDatanet"]

T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 64 * 2**20
"""The largest request body the service reads (a contribution of many records)."""


class HostedDatanet:
    """One hosted datanet: its handle and the lock its requests take turns on."""

    def __init__(self, datanet: Datanet) -> None:
        self.datanet = datanet
        self._lock = threading.Lock()

    def run(self, work: Callable[[Datanet], T]) -> T:
        """Run ``work`` on the handle, alone among this process's requests to it."""
        with self._lock:
            return work(self.datanet)

    def info(self) -> dict[str, Any]:
        """What a client needs to know before it signs: id, schema, visibility, owner."""
        dn = self.datanet
        return {
            "id": dn.id,
            "name": dn.name,
            "schema_id": dn.schema.schema_id,
            "schema_hash": schema_hash(dn.schema),
            "schema_ref": schema_ref(dn.schema),
            "visibility": dn.visibility,
            "owner": dn.owner,
            "grants": dn.grants,
            "duplicates": dn.duplicates,
            "max_record_bytes": dn.max_record_bytes,
            "encrypted": dn.encrypted,
            "records": self.run(len),
        }

    def reader(self, grant: AccessGrant | None, call: SignedCall | None) -> AccessGrant | None:
        """The grant a read presents, bound to the grantee's signed ``read`` call when the
        datanet reads only bound grants (the service never holds the grantee's key)."""
        if grant is None or self.datanet.grants != "bound" or call is None:
            return grant
        return grant.bind(call)


class DatanetService:
    """The datanets a service hosts, found by id or by name.

    Args:
        datanets: Open datanet handles (SQLite folders or PostgreSQL stores); the service
            owns them from now on and closes them in :meth:`close`. Their names must differ.
        max_body_bytes: The largest request body read.

    Raises:
        ConfigError: Two datanets share a name or an id.
    """

    def __init__(
        self, datanets: Iterable[Datanet], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ) -> None:
        self.hosted: dict[str, HostedDatanet] = {}
        self._names: dict[str, str] = {}
        for datanet in datanets:
            if datanet.id in self.hosted or datanet.name in self._names:
                raise ConfigError(f"two hosted datanets share the name or id of {datanet.name!r}")
            self.hosted[datanet.id] = HostedDatanet(datanet)
            self._names[datanet.name] = datanet.id
        self.max_body_bytes = max_body_bytes
        self._spent: dict[str, float] = {}
        self._spent_lock = threading.Lock()

    def spend_call(self, call: SignedCall, *, now: float | None = None) -> None:
        """Accept ``call`` for a state-changing action once: the same signed call sent
        again (a replay by whoever saw it) is refused while it is still fresh; after
        :data:`~openledger.data.remote_signing.CALL_TTL` it is refused as too old anyway.

        NOTE: remembered in memory: a restarted service accepts a call it had taken
        before the restart until the call goes stale (at most ``CALL_TTL`` seconds).

        Raises:
            NonceError: This signed call was used already.
        """
        moment = time.time() if now is None else now
        with self._spent_lock:
            for signature in [s for s, until in self._spent.items() if until < moment]:
                del self._spent[signature]
            if call.signature in self._spent:
                raise NonceError(
                    f"this signed {call.action!r} call was used already (replayed); sign a new one"
                )
            self._spent[call.signature] = call.at + CALL_TTL

    @classmethod
    def open(
        cls,
        locations: Sequence[str | os.PathLike[str]],
        *,
        durability: Durability = "full",
        allow_modules: Sequence[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> DatanetService:
        """Open the datanets at ``locations`` (folders or ``postgresql://`` URLs) and host them.

        Quality rules and encryption keys are code and secrets: to host datanets with them,
        open the handles yourself (``Datanet.open(..., rules=..., encryption_key=...)``) and
        pass them to :class:`DatanetService`.
        """
        opened: list[Datanet] = []
        try:
            for location in locations:
                opened.append(
                    Datanet.open(location, durability=durability, allow_modules=allow_modules)
                )
            return cls(opened, max_body_bytes=max_body_bytes)
        except BaseException:
            for datanet in opened:
                datanet.close()
            raise

    def find(self, ref: str) -> HostedDatanet:
        """The hosted datanet with id (``0x``-hex) or name ``ref``.

        Raises:
            DataNotFoundError: None is hosted under that id or name.
        """
        key = ref.lower() if ref.startswith("0x") else self._names.get(ref, "")
        hosted = self.hosted.get(key)
        if hosted is None:
            raise DataNotFoundError(
                f"no datanet {ref!r} is hosted here; GET /v1/datanets lists them"
            )
        return hosted

    def close(self) -> None:
        """Close every hosted handle."""
        for hosted in self.hosted.values():
            hosted.run(lambda d: d.close())


def parse_model(model: type[T], text: str | bytes | None, what: str) -> T | None:
    """Parse a JSON header or body into ``model`` (``None`` when absent).

    Raises:
        ConfigError: Not valid JSON for ``model``, naming ``what``.
    """
    if text is None or text == "":
        return None
    try:
        return model.model_validate_json(text)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        raise ConfigError(f"{what} is not valid: {exc.errors()[0]['msg']}") from None
