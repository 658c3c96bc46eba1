"""Letting a burst of requests reach an idle engine together.

Requests that arrive over HTTP at the same moment reach the engine spread over the time
the server takes to read, authenticate and plan each one (a few hundred microseconds
apiece on one event loop). An idle engine starts its first step with whichever came
first, and the rest wait for that whole step before their own prefill: under a burst,
most requests' time to first token grows by one step. In process, a burst is queued
before the first step runs and prefills in one batch.

:class:`ArrivalWindow` closes that gap. A request is counted in when it reaches the
handler (:meth:`ArrivalWindow.arrive`, which yields once so that every request the
server has already received is counted before any of them is planned) and is *ready*
once planned. When the engine is idle, the first ready request opens a window that stays
open while counted requests are still being read and planned, and until ``quiet``
seconds have passed since the last arrival (at most ``limit`` seconds after it opened);
then all of them go to the engine at once. A burst that the server has received whole
therefore goes in as soon as its last request is planned, with no idle wait after it; a
lone request on an idle engine waits ``quiet`` seconds from its arrival. A request that
finds the engine busy does not wait (it joins the next step anyway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["Arrival", "ArrivalWindow"]


class Arrival:
    """One request counted into an :class:`ArrivalWindow` (see :meth:`ArrivalWindow.arrive`)."""

    __slots__ = ("_counted", "_window")

    def __init__(self, window: ArrivalWindow, counted: bool) -> None:
        self._window = window
        self._counted = counted

    async def ready(self) -> None:
        """The request is planned: return when it may go to the engine."""
        self.leave()
        await self._window._ready()

    def leave(self) -> None:
        """Stop counting this request (it was refused, or waits elsewhere); idempotent."""
        if self._counted:
            self._counted = False
            self._window._departed()


class ArrivalWindow:
    """Holds requests bound for an idle engine until their burst has arrived.

    Args:
        quiet: Seconds without a new arrival that close the window (0: off).
        limit: Seconds after which the window closes however many keep arriving.
        idle: Returns whether the engine has nothing running or queued.
    """

    def __init__(self, quiet: float, limit: float, idle: Callable[[], bool]) -> None:
        self.quiet = quiet
        self.limit = limit
        self._idle = idle
        self._closed: asyncio.Event | None = None
        self._wake: asyncio.Future[None] | None = None
        self._arriving = 0
        self._opened = 0.0
        self._last = 0.0

    @property
    def arriving(self) -> int:
        """Requests counted in and not ready yet."""
        return self._arriving

    async def arrive(self) -> Arrival:
        """Count a request in as it reaches the server, before it is read and planned.

        Yields to the event loop once when a window may form, so the requests the server
        has received meanwhile are counted too. Call :meth:`Arrival.ready` when the
        request is planned, or :meth:`Arrival.leave` if it goes no further.
        """
        if self.quiet <= 0:
            return Arrival(self, counted=False)
        self._arriving += 1
        self._last = time.perf_counter()
        arrival = Arrival(self, counted=True)
        if self._closed is not None or self._idle():
            try:
                await asyncio.sleep(0)
            except BaseException:
                arrival.leave()  # NOTE: cancelled here, it would hold every window to its limit
                raise
        return arrival

    async def wait(self) -> None:
        """Return when a request that arrives and is ready at once may go to the engine."""
        await (await self.arrive()).ready()

    def _departed(self) -> None:
        self._arriving -= 1
        if self._arriving == 0 and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _ready(self) -> None:
        if self.quiet <= 0:
            return
        if self._closed is not None:
            await self._closed.wait()
            return
        if not self._idle():
            return
        # NOTE: the request that opens the window keeps it (cancelled, it still closes it)
        loop = asyncio.get_running_loop()
        closed = self._closed = asyncio.Event()
        self._opened = time.perf_counter()
        try:
            while (due := self._due()) is not None:
                wake = self._wake = loop.create_future()
                timer = loop.call_later(max(0.0, due - time.perf_counter()), _wake_up, wake)
                try:
                    await wake
                finally:
                    timer.cancel()
        finally:
            self._wake = None
            self._closed = None
            closed.set()

    def _due(self) -> float | None:
        """When to look again (a perf_counter time), or None when the window closes now."""
        now = time.perf_counter()
        limit = self._opened + self.limit
        if now >= limit:
            return None
        if self._arriving:
            return limit  # NOTE: or earlier, when the last counted request is ready
        quiet = self._last + self.quiet
        return None if now >= quiet else min(quiet, limit)


def _wake_up(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)
