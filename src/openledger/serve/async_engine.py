"""asyncio front end: a background step loop feeding one queue per request.

Everything that touches the engine's state (admitting, aborting, stepping, registering
or removing adapters) holds one lock, so adapter changes land between steps, never
inside one. Fetching and validating an adapter (downloads, hashing) runs outside it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TypeVar

from openledger.exceptions import ConfigError, EngineDeadError
from openledger.serve.config import EngineConfig
from openledger.serve.engine import Engine
from openledger.serve.outputs import RequestOutput
from openledger.serve.params import SamplingParams
from openledger.serve.request import PromptInput

if TYPE_CHECKING:
    from openledger.serve.adapters import AdapterSpec, AdapterStore

__all__ = ["AsyncEngine"]

T = TypeVar("T")


class AsyncEngine:
    """Serve many concurrent coroutines from one :class:`Engine`.

    Steps run in a worker thread (the event loop stays free) while there is work; each
    request's outputs go to its own queue. Leaving an ``async for`` early, or cancelling
    the task, aborts the request.

    Args:
        base_model: Passed to :class:`Engine`.
        config: Passed to :class:`Engine`.
        engine: Use an existing engine instead of building one.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     async with AsyncEngine("smollm2-135m-instruct") as engine:
        ...         async for piece in engine.stream("Hello"):
        ...             print(piece, end="")
    """

    def __init__(
        self,
        base_model: str | os.PathLike[str] | None = None,
        config: EngineConfig | None = None,
        *,
        engine: Engine | None = None,
    ):
        if engine is None:
            if base_model is None:
                raise ValueError("give base_model or engine")
            engine = Engine(base_model, config)
        self.engine = engine
        self._lock = threading.Lock()
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._work = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the step loop; requests still running are aborted."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for request_id in list(self._queues):
            self._abort(request_id)

    async def stream_outputs(
        self, prompt: PromptInput, params: SamplingParams | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's :class:`RequestOutput` after every step that touches it.

        Raises:
            InvalidRequestError: The request is refused (before anything is yielded).
            EngineDeadError: The step loop failed.
        """
        request_id, queue = self._submit(prompt, params)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise EngineDeadError(f"the engine's step loop failed: {item!r}") from item
                yield item
                if item.finished:
                    return
        finally:
            self._abort(request_id)

    async def stream(
        self, prompt: PromptInput, params: SamplingParams | None = None
    ) -> AsyncIterator[str]:
        """Yield the request's text as it is decoded."""
        async for output in self.stream_outputs(prompt, params):
            if output.delta_text:
                yield output.delta_text

    async def generate(
        self, prompt: PromptInput, params: SamplingParams | None = None
    ) -> RequestOutput:
        """Run one request to completion and return its final output."""
        final: RequestOutput | None = None
        async for output in self.stream_outputs(prompt, params):
            final = output
        if final is None:  # NOTE: unreachable: the stream always ends on a finished output
            raise EngineDeadError("request ended without output")
        return final

    async def add_adapter(
        self, name: str, source: str | os.PathLike[str], *, sha256: str | None = None
    ) -> AdapterSpec:
        """Register an adapter while requests run (see :meth:`Engine.add_adapter`).

        The source is fetched and validated in a worker thread beside running steps; the
        registration itself happens between two steps.
        """
        store = self._store()
        spec = await self._in_thread(store.prepare, name, source, sha256=sha256)
        return await self._in_thread(self._locked, store.register, spec)

    async def remove_adapter(self, name: str) -> None:
        """Unregister an adapter between two steps; admitted requests using it finish
        with its weights (see :meth:`AdapterStore.remove`)."""
        await self._in_thread(self._locked, self._store().remove, name)

    async def replace_adapter(
        self, name: str, source: str | os.PathLike[str], *, sha256: str | None = None
    ) -> AdapterSpec:
        """Swap the adapter registered as ``name`` for a new source in one step boundary.

        Requests admitted before the swap finish with the old weights, later ones get the
        new; none sees the name missing. The new source is validated first: if it is
        refused, the old adapter stays.
        """
        store = self._store()
        spec = await self._in_thread(store.prepare, name, source, sha256=sha256)

        def swap() -> AdapterSpec:
            store.remove(name)
            return store.register(spec)

        return await self._in_thread(self._locked, swap)

    def _store(self) -> AdapterStore:
        if self.engine.adapters is None:
            raise ConfigError("this engine serves no adapters (EngineConfig.max_adapter_slots=0)")
        return self.engine.adapters

    def _locked(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            return fn(*args)

    async def _in_thread(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def _submit(
        self, prompt: PromptInput, params: SamplingParams | None
    ) -> tuple[str, asyncio.Queue[RequestOutput | BaseException]]:
        if self._error is not None:
            raise EngineDeadError(f"the engine's step loop failed earlier: {self._error!r}")
        with self._lock:
            request_id = self.engine.add_request(prompt, params)
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._queues[request_id] = queue
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self._work.set()
        return request_id, queue

    def _abort(self, request_id: str) -> None:
        if self._queues.pop(request_id, None) is not None:
            with self._lock:
                self.engine.abort_request(request_id)

    def _step(self) -> list[RequestOutput]:
        with self._lock:
            return self.engine.step()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._work.wait()
            try:
                outputs = await loop.run_in_executor(None, self._step)
            except Exception as exc:
                self._fail(exc)
                return
            for output in outputs:
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)
            with self._lock:
                if not self.engine.has_unfinished_requests():
                    self._work.clear()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        for queue in self._queues.values():
            queue.put_nowait(exc)
