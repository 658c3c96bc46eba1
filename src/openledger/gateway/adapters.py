"""The adapters a gateway serves by name, and their lifecycle while requests run.

Every version of an adapter is its own engine registration, ``<name>@<serial>`` (``@`` is
not allowed in served names, so the two never collide); a served name points to its
current version::

    put("medqa", src)        add_adapter("medqa@7", src)    validated beside running steps
                             current["medqa"] = medqa@7     one assignment on the event loop
    put("medqa", src2, ...)  add_adapter("medqa@8", src2)   medqa@7 keeps serving meanwhile
                             current["medqa"] = medqa@8     requests planned from now get @8
                             retire(medqa@7)                when its last request ends:
                                                            remove_adapter("medqa@7")
    delete("medqa")          current.pop("medqa")           new requests get 404
                             retire(medqa@8)                then the engine forgets it

A request holds the versions it was planned with (:meth:`ServedAdapters.hold`) until it
ends, so the adapter id in its receipt is always the one whose weights served it, even
when it waited in the admission queue across a replace. Nothing here touches the engine
except through the engine's adapter methods (:class:`~openledger.gateway.engines.ServingEngine`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from openledger.exceptions import (
    AdapterConflictError,
    AdapterIdMismatchError,
    AdapterNotFoundError,
    ModelNotFoundError,
    RequestFieldError,
)
from openledger.gateway.engines import ServingEngine
from openledger.types import Hash32, to_hash32

__all__ = ["ServedAdapter", "ServedAdapters", "check_adapter_name", "resolver_source"]

logger = logging.getLogger("openledger.gateway")

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
# NOTE: names a resolver maps into a folder or hub namespace: one path segment, no "..".
_RESOLVABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class ServedAdapter:
    """One version of a served adapter.

    Attributes:
        name: The name clients send as ``model``.
        engine_name: Its registration in the engine, ``<name>@<serial>``.
        adapter_id: Its manifest id (keccak256 of its weights file).
        source: Where it was loaded from.
        created: Unix seconds it started serving.
    """

    name: str
    engine_name: str
    adapter_id: Hash32
    source: str
    created: int


def check_adapter_name(name: str) -> str:
    """Return ``name`` if it may name an adapter.

    Raises:
        RequestFieldError: 1-128 letters, digits or ``._:/-`` starting with a letter or digit.
    """
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise RequestFieldError(
            f"adapter name {name!r} must be 1-128 letters, digits or ._:/- "
            "(starting with a letter or digit)",
            "name",
        )
    return name


def resolver_source(resolver: str, name: str) -> str | None:
    """The source ``name`` maps to under ``resolver`` (a folder, or ``hf://namespace``).

    Returns None when the name cannot map (several path segments, ``..``, odd characters),
    or when the resolver is a folder without a sub-folder of that name.
    """
    if len(name) > 96 or not _RESOLVABLE.fullmatch(name):
        return None
    if resolver.startswith("hf://"):
        return f"{resolver.rstrip('/')}/{name}"
    folder = Path(resolver) / name
    return str(folder) if folder.is_dir() else None


class ServedAdapters:
    """Served adapters by name, their versions in use, and the lifecycle operations.

    Args:
        engine: The engine they are registered on.
        resolver: Folder or ``hf://namespace`` unknown names load from, or None.
        drain_timeout: Longest wait for a retired version's requests before it is removed.
    """

    def __init__(self, engine: ServingEngine, resolver: str | None, drain_timeout: float) -> None:
        self.engine = engine
        self.resolver = resolver
        self.drain_timeout = drain_timeout
        self.current: dict[str, ServedAdapter] = {}
        self._holds: Counter[str] = Counter()
        self._idle: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._serial = 0

    def engine_name(self, name: str) -> str:
        """A fresh engine registration name for a new version of ``name``."""
        self._serial += 1
        return f"{name}@{self._serial}"

    def adopt(self, served: ServedAdapter) -> None:
        """Serve a version registered on the engine already (at start-up)."""
        self.current[served.name] = served

    def hold(self, engine_names: Iterable[str]) -> None:
        """Count a request using these versions (planned, queued or running)."""
        self._holds.update(engine_names)

    def release(self, engine_names: Iterable[str]) -> None:
        """Undo one :meth:`hold`; wakes a retirement waiting for these versions."""
        for engine_name in engine_names:
            self._holds[engine_name] -= 1
            if self._holds[engine_name] <= 0:
                del self._holds[engine_name]
                idle = self._idle.get(engine_name)
                if idle is not None:
                    idle.set()

    def in_use(self, engine_name: str) -> int:
        """Requests holding a version now."""
        return self._holds.get(engine_name, 0)

    async def put(
        self,
        name: str,
        source: str,
        *,
        sha256: str | None = None,
        adapter_id: str | None = None,
        replace: bool = False,
    ) -> tuple[ServedAdapter, ServedAdapter | None]:
        """Serve ``source`` under ``name``; with ``replace``, in place of its current version.

        The new version is fetched and validated while the current one keeps serving; if
        anything is refused, nothing changes. The replaced version is removed from the
        engine once the requests holding it end.

        Returns:
            The new version and the one it replaced (or None).

        Raises:
            RequestFieldError: A malformed name or adapter id.
            AdapterConflictError: ``name`` is served and ``replace`` is false.
            AdapterIdMismatchError: The weights are not ``adapter_id``.
            AdapterError: The engine refused the source (missing, policy, format, pin).
        """
        check_adapter_name(name)
        expected = _expected_id(adapter_id)
        async with self._lock(name):
            previous = self.current.get(name)
            if previous is not None and not replace:
                raise AdapterConflictError(
                    f"adapter {name!r} is served already (id {previous.adapter_id}); "
                    f"replace it with PUT /v1/adapters/{name} or delete it first"
                )
            served = await self._register(name, source, sha256, expected)
            self.current[name] = served  # NOTE: the switch: later plans get the new version
        if previous is not None:
            task = asyncio.get_running_loop().create_task(self._retire(previous))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        logger.info("adapter %s serves %s (id %s)", name, source, served.adapter_id)
        return served, previous

    async def delete(self, name: str) -> ServedAdapter:
        """Stop serving ``name``: new requests get 404 at once; returns when the requests
        that use it have finished (or ``drain_timeout`` passed) and the engine forgot it.

        Raises:
            ModelNotFoundError: ``name`` is not served.
        """
        async with self._lock(name):
            served = self.current.pop(name, None)
            if served is None:
                raise ModelNotFoundError(f"no adapter named {name!r} is served here")
            await self._retire(served)
        logger.info("adapter %s removed", name)
        return served

    async def ensure(self, names: Iterable[str]) -> None:
        """Load names that are not served through the resolver, if one is configured.

        Names the resolver cannot map or find stay unknown (the request gets 404).

        Raises:
            AdapterError: The resolver found the adapter but the engine refused it.
        """
        if self.resolver is None:
            return
        for name in names:
            if name in self.current:
                continue
            source = resolver_source(self.resolver, name)
            if source is None:
                continue
            async with self._lock(name):
                if name in self.current:
                    continue  # NOTE: a request beside this one loaded it while we waited
                try:
                    self.current[name] = await self._register(name, source, None, None)
                except AdapterNotFoundError:
                    logger.info("adapter %s not found under the resolver %s", name, self.resolver)
                    continue
            logger.info("adapter %s loaded on first request from %s", name, source)

    async def _register(
        self, name: str, source: str, sha256: str | None, expected: Hash32 | None
    ) -> ServedAdapter:
        engine_name = self.engine_name(name)
        spec = await self.engine.add_adapter(engine_name, source, sha256=sha256)
        adapter_id = to_hash32(spec.adapter_id or spec.weights_hash, what="adapter id")
        if expected is not None and adapter_id != expected:
            await self.engine.remove_adapter(engine_name)
            raise AdapterIdMismatchError(
                f"{source} holds adapter {adapter_id}, not the expected {expected}; "
                "nothing was changed"
            )
        return ServedAdapter(name, engine_name, adapter_id, source, int(time.time()))

    async def _retire(self, served: ServedAdapter) -> None:
        """Remove a version from the engine once no request holds it."""
        engine_name = served.engine_name
        if self.in_use(engine_name):
            idle = self._idle.setdefault(engine_name, asyncio.Event())
            try:
                await asyncio.wait_for(idle.wait(), self.drain_timeout)
            except TimeoutError:
                logger.warning(
                    "adapter %s: %d requests still use version %s after %.0f s; removing it "
                    "(requests in the engine finish on its weights)",
                    served.name,
                    self.in_use(engine_name),
                    engine_name,
                    self.drain_timeout,
                )
            finally:
                self._idle.pop(engine_name, None)
        await self.engine.remove_adapter(engine_name)

    async def close(self) -> None:
        """Wait for replaced versions being retired (bounded by ``drain_timeout``)."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())


def _expected_id(adapter_id: str | None) -> Hash32 | None:
    if adapter_id is None:
        return None
    try:
        return to_hash32(adapter_id, what="adapter_id")
    except ValueError as exc:
        raise RequestFieldError(str(exc), "adapter_id") from None
