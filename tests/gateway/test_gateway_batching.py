"""ArrivalWindow: a burst bound for an idle engine goes in together, as soon as its last
request is planned; nothing else waits, and the count of requests in between stays exact."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_requests_being_planned_hold_the_window_until_they_are_ready() -> None:
    async def scenario() -> list[str]:
        window = ArrivalWindow(0.01, 30.0, idle=lambda: True)
        log: list[str] = []

        async def request(name: str, planning: float) -> None:
            arrival = await window.arrive()
            await asyncio.sleep(planning)  # NOTE: reading, authenticating, planning
            log.append(f"ready {name}")
            await arrival.ready()
            log.append(f"go {name}")

        await asyncio.wait_for(asyncio.gather(request("a", 0), request("b", 0.3)), timeout=10)
        return log

    log = run(scenario())
    assert log[:2] == ["ready a", "ready b"]  # NOTE: a waited for b, far past the quiet time
    assert sorted(log[2:]) == ["go a", "go b"]


def test_requests_the_server_has_received_are_counted_before_any_is_planned() -> None:
    async def scenario() -> tuple[list[int], int]:
        window = ArrivalWindow(0.01, 30.0, idle=lambda: True)
        counted: list[int] = []

        async def request() -> None:
            arrival = await window.arrive()
            counted.append(window.arriving)
            await arrival.ready()

        await asyncio.wait_for(asyncio.gather(*(request() for _ in range(5))), timeout=10)
        return counted, window.arriving

    counted, left = run(scenario())
    assert counted[0] == 5
    assert left == 0


def test_a_request_that_leaves_releases_the_window() -> None:
    async def scenario() -> float:
        window = ArrivalWindow(0.01, 30.0, idle=lambda: True)
        refused = await window.arrive()
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, refused.leave)  # NOTE: e.g. its key was not valid
        start = loop.time()
        await asyncio.wait_for(window.wait(), timeout=10)
        refused.leave()  # NOTE: idempotent
        assert window.arriving == 0
        return loop.time() - start

    assert 0.15 <= run(scenario()) < 10  # type: ignore[operator]


def test_the_limit_caps_a_request_that_never_gets_ready() -> None:
    async def scenario() -> None:
        window = ArrivalWindow(0.01, 0.1, idle=lambda: True)
        stuck = await window.arrive()
        await asyncio.wait_for(window.wait(), timeout=10)
        stuck.leave()

    run(scenario())


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 20),  # arrival, ms
            st.integers(0, 20),  # planning, ms
            st.sampled_from(["ready", "leave", "cancel"]),
        ),
        min_size=1,
        max_size=8,
    ),
    st.booleans(),
)
def test_every_schedule_ends_with_nothing_counted_and_nobody_held_past_the_limit(
    schedule: list[tuple[int, int, str]], idle: bool
) -> None:
    async def scenario() -> None:
        window = ArrivalWindow(0.005, 0.05, idle=lambda: idle)
        loop = asyncio.get_running_loop()

        async def request(arrive_ms: int, plan_ms: int, outcome: str) -> None:
            await asyncio.sleep(arrive_ms / 1000)
            arrival = await window.arrive()
            try:
                await asyncio.sleep(plan_ms / 1000)
                if outcome == "leave":
                    return
                waited = loop.time()
                await arrival.ready()
                # NOTE: never held past the limit (plus slack for a loaded machine)
                assert loop.time() - waited < 0.05 + 2.0
            finally:
                arrival.leave()

        tasks = [asyncio.ensure_future(request(*entry)) for entry in schedule]
        for task, (_, plan_ms, outcome) in zip(tasks, schedule, strict=True):
            if outcome == "cancel":
                loop.call_later((plan_ms + 1) / 1000, task.cancel)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        for result in results:
            assert result is None or isinstance(result, asyncio.CancelledError)
        assert window.arriving == 0
        assert window._closed is None  # NOTE: no window left open

    run(scenario())


def test_a_request_cancelled_as_it_is_counted_in_is_not_counted() -> None:
    async def scenario() -> int:
        window = ArrivalWindow(0.01, 30.0, idle=lambda: True)
        task = asyncio.ensure_future(window.arrive())
        await asyncio.sleep(0)  # NOTE: it is counted in and yields
        assert window.arriving == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return window.arriving

    assert run(scenario()) == 0
