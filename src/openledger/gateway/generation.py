"""One HTTP request's choices running in the engine, merged into one stream of events.

Each choice (a prompt, and one of its ``n`` samples) is an engine request. A pump task per
choice moves its outputs into one queue; cancelling the :class:`Generation` cancels the
pumps, which aborts their engine requests at once (KV blocks and adapter pins freed). A
request of one choice (most of them) reads its engine stream directly: no pump, no queue,
one task switch less between a step's output and the bytes sent for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from openledger.gateway.engines import ServingEngine
from openledger.serve import RequestOutput, SamplingParams
from openledger.serve.request import PromptInput

__all__ = ["Choice", "Generation"]


@dataclass(frozen=True, slots=True)
class Choice:
    """One engine request of an HTTP request.

    Attributes:
        index: The choice's index in the response.
        prompt_index: Which prompt of the request it samples.
        prompt: What the engine gets (text, messages or token ids).
        params: Its sampling parameters.
    """

    index: int
    prompt_index: int
    prompt: PromptInput
    params: SamplingParams


_Event = tuple[int, RequestOutput | BaseException | None]


@dataclass
class Generation:
    """The running choices of one HTTP request.

    Attributes:
        choices: What runs, by choice index.
        latest: Each choice's latest output (its final one once finished).
    """

    engine: ServingEngine
    choices: list[Choice]
    latest: dict[int, RequestOutput] = field(default_factory=dict)
    _queue: asyncio.Queue[_Event] = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _open: int = 0
    _single: AsyncIterator[RequestOutput] | None = None

    def start(self) -> None:
        """Submit every choice (each pump submits its request at its first run; a lone
        choice is submitted when :meth:`events` is first read)."""
        if len(self.choices) == 1:
            choice = self.choices[0]
            self._single = self.engine.stream_outputs(choice.prompt, choice.params)
            return
        loop = asyncio.get_running_loop()
        self._open = len(self.choices)
        self._tasks = [loop.create_task(self._pump(choice)) for choice in self.choices]

    async def events(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Yield ``(choice index, output)`` as steps produce them, until all finish.

        Raises:
            Exception: The first error of any choice (a refused request, a dead engine);
                the other choices are cancelled.
        """
        if self._single is not None:
            index = self.choices[0].index
            async for output in self._single:
                self.latest[index] = output
                yield index, output
            return
        while self._open:
            index, item = await self._queue.get()
            if item is None:
                self._open -= 1
                continue
            if isinstance(item, BaseException):
                await self.cancel()
                raise item
            self.latest[index] = item
            yield index, item

    async def cancel(self) -> None:
        """Abort every choice still running and wait until they are aborted."""
        close = getattr(self._single, "aclose", None)
        if close is not None:
            await close()  # NOTE: the engine's stream aborts its request as it closes
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._open = 0

    @property
    def finished(self) -> bool:
        """Whether every choice has its final output."""
        return len(self.latest) == len(self.choices) and all(
            out.finished for out in self.latest.values()
        )

    @property
    def num_generated_tokens(self) -> int:
        """Tokens generated so far over all choices."""
        return sum(len(out.token_ids) for out in self.latest.values())

    async def _pump(self, choice: Choice) -> None:
        try:
            async for output in self.engine.stream_outputs(choice.prompt, choice.params):
                self._queue.put_nowait((choice.index, output))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._queue.put_nowait((choice.index, exc))
            return
        self._queue.put_nowait((choice.index, None))
