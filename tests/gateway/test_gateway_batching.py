"""ArrivalWindow: a burst bound for an idle engine goes in together; nothing else waits."""

from __future__ import annotations

import asyncio

from openledger.gateway.batching import ArrivalWindow


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_burst_on_an_idle_engine_is_released_together_after_its_last_arrival() -> None:
    async def scenario() -> list[str]:
        window = ArrivalWindow(0.5, 30.0, idle=lambda: True)
        log: list[str] = []

        async def request(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            log.append(f"arrive {name}")
            await window.wait()
            log.append(f"go {name}")

        await asyncio.gather(*(request(n, 0.01 * i) for i, n in enumerate("abc")))
        return log

    log = run(scenario())
    assert log[:3] == ["arrive a", "arrive b", "arrive c"]
    assert sorted(log[3:]) == ["go a", "go b", "go c"]


def test_the_limit_closes_a_window_that_keeps_getting_arrivals() -> None:
    async def scenario() -> None:
        window = ArrivalWindow(60.0, 0.05, idle=lambda: True)
        await asyncio.wait_for(window.wait(), timeout=30)

    run(scenario())


def test_nothing_waits_when_off_or_when_the_engine_is_busy() -> None:
    async def scenario() -> None:
        for window in (
            ArrivalWindow(0.0, 1.0, idle=lambda: True),
            ArrivalWindow(60, 60, idle=lambda: False),
        ):
            await asyncio.wait_for(window.wait(), timeout=5)

    run(scenario())


def test_the_opener_leaving_still_releases_the_others() -> None:
    async def scenario() -> bool:
        window = ArrivalWindow(60.0, 120.0, idle=lambda: True)
        opener = asyncio.ensure_future(window.wait())
        await asyncio.sleep(0.01)
        follower = asyncio.ensure_future(window.wait())
        await asyncio.sleep(0.01)
        opener.cancel()
        await asyncio.wait_for(follower, timeout=5)
        return opener.cancelled()

    assert run(scenario())
