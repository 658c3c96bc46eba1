"""asyncio front end: a background step loop feeding one queue per request.

Everything that touches the engine's state (admitting, aborting, stepping, registering
or removing adapters) holds one lock, so adapter changes land between steps, never
inside one. Fetching and validating an adapter (downloads, hashing) runs outside it.

The event loop never waits for that lock while a step runs (a prefill step can take
hundreds of milliseconds, and a server must go on reading requests meanwhile). Adapter
changes wait for the requests submitted before them to be admitted, so a request sent
before ``remove_adapter`` still runs on that adapter::

    submit   lock free  -> admitted at once, on the event loop
             lock held  -> put in the inbox; the step thread admits it under the lock
                           before its next step (so it joins that step) and answers it
    abort    lock free  -> at once;   lock held -> the same inbox, after what came before it
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
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


@dataclass(slots=True)
class _Admission:
    """A request waiting in the inbox for the step thread to admit it."""

    request_id: str
    prompt: PromptInput
    params: SamplingParams | None
    answer: asyncio.Future[None]


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
        # NOTE: admissions and aborts (request ids) in arrival order: filled on the event
        # loop, emptied by the step thread (a deque's append and popleft are thread-safe)
        self._inbox: deque[_Admission | str] = deque()
        self._numbers = itertools.count()

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the step loop; requests still running are aborted, and the engine is
        closed (:meth:`Engine.close`: a tensor-parallel engine's workers stop)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        # NOTE: no step runs any more, but one may still hold the lock in its thread: the
        # aborts wait for it there, not on the event loop
        closed = EngineDeadError("the engine was closed")
        aborts = [item for item in self._inbox if isinstance(item, str)]
        for item in self._inbox:
            if not isinstance(item, str):
                _settle(item.answer, closed)
        self._inbox.clear()
        aborts += list(self._queues)
        self._queues.clear()
        if aborts:
            await self._in_thread(self._locked, self._abort_all, aborts)
        await self._in_thread(self.engine.close)

    def _abort_all(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.engine.abort_request(request_id)

    async def stream_outputs(
        self, prompt: PromptInput, params: SamplingParams | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's :class:`RequestOutput` after every step that touches it.

        Raises:
            InvalidRequestError: The request is refused (before anything is yielded).
            EngineDeadError: The step loop failed.
        """
        request_id = f"async-{next(self._numbers)}"
        try:
            queue = await self._submit(request_id, prompt, params)
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
        await self._admitted_before()
        return await self._in_thread(self._locked, store.register, spec)

    async def remove_adapter(self, name: str) -> None:
        """Unregister an adapter between two steps; admitted requests using it finish
        with its weights (see :meth:`AdapterStore.remove`)."""
        store = self._store()
        await self._admitted_before()
        await self._in_thread(self._locked, store.remove, name)

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

        await self._admitted_before()
        return await self._in_thread(self._locked, swap)

    async def _admitted_before(self) -> None:
        """Wait until the requests submitted before now are admitted (or refused).

        Requests that arrive during a step wait in the inbox until the next one; an
        adapter change made after them must not land first (a request for an adapter
        removed right after it was sent would then be refused). Leaving this wait early
        does not cancel them.
        """
        waiting = {item.answer for item in self._inbox if not isinstance(item, str)}
        if waiting:
            self._wake()
            await asyncio.wait(waiting)

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

    async def _submit(
        self, request_id: str, prompt: PromptInput, params: SamplingParams | None
    ) -> asyncio.Queue[RequestOutput | BaseException]:
        """Admit a request and return its output queue (see the module docstring).

        Raises:
            InvalidRequestError, AdapterError: The engine refused it.
        """
        if self._error is not None:
            raise EngineDeadError(f"the engine's step loop failed earlier: {self._error!r}")
        # NOTE: registered first: the step that admits it from the inbox may also produce
        # its first output
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._queues[request_id] = queue
        try:
            if self._lock.acquire(blocking=False):
                try:
                    self.engine.add_request(prompt, params, request_id=request_id)
                finally:
                    self._lock.release()
                self._wake()
            else:
                answer = asyncio.get_running_loop().create_future()
                self._inbox.append(_Admission(request_id, prompt, params, answer))
                self._wake()
                await answer
        except asyncio.CancelledError:
            # NOTE: the caller left while the request waited in the inbox: its abort goes
            # after its admission, so the step thread never runs it unobserved
            if self._queues.pop(request_id, None) is not None and self._error is None:
                self._inbox.append(request_id)
            raise
        except BaseException:
            self._queues.pop(request_id, None)
            raise
        return queue

    def _wake(self) -> None:
        """Make sure the step loop runs (it goes idle when nothing is left to do)."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self._work.set()

    def _abort(self, request_id: str) -> None:
        """Abort a request without waiting for a running step (see the module docstring)."""
        if self._queues.pop(request_id, None) is None:
            return
        if self._lock.acquire(blocking=False):
            try:
                self.engine.abort_request(request_id)
            finally:
                self._lock.release()
        elif self._error is None:
            self._inbox.append(request_id)
            self._wake()

    def _admit_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the step thread, under the lock: admissions and aborts, in arrival order."""
        while self._inbox:
            item = self._inbox.popleft()
            if isinstance(item, str):
                self.engine.abort_request(item)
                continue
            try:
                self.engine.add_request(item.prompt, item.params, request_id=item.request_id)
            except Exception as exc:
                loop.call_soon_threadsafe(_settle, item.answer, exc)
            else:
                loop.call_soon_threadsafe(_settle, item.answer, None)

    def _step(self, loop: asyncio.AbstractEventLoop) -> list[RequestOutput]:
        with self._lock:
            self._admit_waiting(loop)
            return self.engine.step()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._work.wait()
            try:
                outputs = await loop.run_in_executor(None, self._step, loop)
            except Exception as exc:
                self._fail(exc)
                return
            for output in outputs:
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)
            # NOTE: the inbox is filled on this thread and the step thread is done: nothing
            # can be added between this check and the wait above
            if self._inbox:
                continue
            with self._lock:
                if not self.engine.has_unfinished_requests():
                    self._work.clear()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        for queue in self._queues.values():
            queue.put_nowait(exc)
        dead = EngineDeadError(f"the engine's step loop failed: {exc!r}")
        while self._inbox:
            item = self._inbox.popleft()
            if not isinstance(item, str):
                _settle(item.answer, dead)


def _settle(answer: asyncio.Future[None], error: BaseException | None) -> None:
    """Answer an inbox admission (on the event loop); a caller who left is skipped."""
    if answer.done():
        return
    if error is None:
        answer.set_result(None)
    else:
        answer.set_exception(error)
