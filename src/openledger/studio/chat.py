"""Engines for the Chat tab: one :class:`~openledger.serve.AsyncEngine` per base model.

Only the engine of the base model in use is kept (a laptop holds one model at a time);
adapters are registered on it the first time they are asked for.
"""

from __future__ import annotations

import asyncio
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

    async def prepare(self, adapter: str | None, base_model: str | None) -> tuple[Any, str]:
        """Return the engine to answer with and the base model it serves.

        With ``adapter``, its manifest's base model is used and the adapter registered.

        Raises:
            ConfigError: Neither an adapter nor a base model.
            DataNotFoundError: No such adapter.
            OpenLedgerError: The base model or adapter cannot be loaded.
        """
        from openledger.exceptions import ConfigError

        if adapter:
            handle = await run_in_threadpool(self.workspace.adapter, adapter)
            base_model = handle.manifest.base_model
        if not base_model:
            raise ConfigError("pick an adapter or a base model to chat with")
        async with self._lock:
            engine = await self._engine(base_model)
            if adapter and adapter not in self.adapters:
                await engine.add_adapter(adapter, self.workspace.adapters_dir / adapter)
                self.adapters.add(adapter)
        return engine, base_model

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
