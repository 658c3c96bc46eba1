"""Engines for the Chat tab: one :class:`~openledger.serve.AsyncEngine` per base model.

Only the engine of the base model in use is kept (a laptop holds one model at a time);
adapters are registered on it the first time they are asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from openledger.studio.workspace import Workspace

__all__ = ["ChatEngines"]


class ChatEngines:
    """The Chat tab's engine and its registered adapters.

    Args:
        workspace: Where adapters are found.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.base: str | None = None
        self.engine: Any = None
        self.adapters: set[str] = set()
        self._lock = asyncio.Lock()

    async def prepare(
        self, adapters: Sequence[str], base_model: str | None
    ) -> tuple[Any, str, dict[str, Any]]:
        """Return the engine to answer with, the base model it serves and each adapter's
        manifest.

        With ``adapters`` (one, or the adapters of a mix), their manifests' base model is
        used and the adapters are registered on the engine.

        Raises:
            ConfigError: Neither adapters nor a base model, or adapters of different base
                models.
            DataNotFoundError: No such adapter.
            OpenLedgerError: The base model or an adapter cannot be loaded.
        """
        from openledger.exceptions import ConfigError

        manifests = {}
        for name in adapters:
            handle = await run_in_threadpool(self.workspace.adapter, name)
            manifests[name] = handle.manifest
        bases = sorted({m.base_model for m in manifests.values()})
        if len(bases) > 1:
            raise ConfigError(
                f"the adapters of a mix must share one base model; these use {', '.join(bases)}"
            )
        if bases:
            base_model = bases[0]
        if not base_model:
            raise ConfigError("pick an adapter or a base model to chat with")
        async with self._lock:
            engine = await self._engine(base_model)
            for name in adapters:
                if name not in self.adapters:
                    await engine.add_adapter(name, self.workspace.adapters_dir / name)
                    self.adapters.add(name)
        return engine, base_model, manifests

    async def _engine(self, base_model: str) -> Any:
        from openledger.serve import AsyncEngine, Engine

        if self.base == base_model and self.engine is not None:
            return self.engine
        await self.close()
        engine = await run_in_threadpool(Engine, base_model)
        self.engine, self.base, self.adapters = AsyncEngine(engine=engine), base_model, set()
        return self.engine

    async def close(self) -> None:
        """Stop the engine's step loop and forget it."""
        if self.engine is not None:
            await self.engine.close()
        self.engine, self.base, self.adapters = None, None, set()
