"""Letting a burst of requests reach an idle engine together.

Requests that arrive over HTTP at the same moment reach the engine spread over the time
the server takes to read, authenticate and plan each one (about a millisecond apiece).
An idle engine starts its first step with whichever came first, and the rest wait for
that whole step before their own prefill: under a burst, most requests' time to first
token grows by one step. In process, a burst is queued before the first step runs and
prefills in one batch.

:class:`ArrivalWindow` closes that gap: when the engine is idle, the first request opens a
window that stays open while requests keep arriving (each extends it by ``quiet``
seconds, up to ``limit`` after it opened); then all of them go to the engine at once. A
request that finds the engine busy does not wait (it joins the next step anyway); a lone
request on an idle engine waits ``quiet`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["ArrivalWindow"]


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
        self._opened = 0.0
        self._last = 0.0

    async def wait(self) -> None:
        """Return when this request may go to the engine."""
        if self.quiet <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._closed is not None:
            self._last = now
            await self._closed.wait()
            return
        if not self._idle():
            return
        # NOTE: the request that opens the window keeps it (cancelled, it still closes it)
        closed = self._closed = asyncio.Event()
        self._opened = self._last = now
        try:
            while (due := min(self._last + self.quiet, self._opened + self.limit)) > loop.time():
                await asyncio.sleep(due - loop.time())
        finally:
            self._closed = None
            closed.set()
