"""AsyncEngine: concurrent streams, cancellation, refused requests, a failing step loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from openledger.exceptions import EngineDeadError, InvalidRequestError
from openledger.serve import AsyncEngine, Engine, EngineConfig, SamplingParams

PARAMS = SamplingParams(max_tokens=10, ignore_eos=True)
PROMPTS = ["The capital", "Numbers: 0 1 2", "def add(a, b):"]


@pytest.fixture
def engine(tiny_checkpoints: dict[str, Path]) -> Engine:
    return Engine(tiny_checkpoints["mistral"], EngineConfig(block_size=4, num_blocks=64))


async def _collect(aengine: AsyncEngine, prompt: str, params: SamplingParams = PARAMS) -> str:
    return "".join([piece async for piece in aengine.stream(prompt, params)])


def test_concurrent_streams_match_the_sync_engine(engine: Engine) -> None:
    expected = [out.text for out in engine.generate(PROMPTS, PARAMS)]

    async def main() -> list[str]:
        async with AsyncEngine(engine=engine) as aengine:
            return list(await asyncio.gather(*(_collect(aengine, p) for p in PROMPTS)))

    assert asyncio.run(main()) == expected
    assert not engine.has_unfinished_requests()


def test_generate_reports_metrics(engine: Engine) -> None:
    async def main() -> None:
        async with AsyncEngine(engine=engine) as aengine:
            out = await aengine.generate("The capital", PARAMS)
        assert out.finished
        assert len(out.token_ids) == 10
        assert out.metrics.time_to_first_token is not None
        assert out.metrics.mean_inter_token_latency is not None

    asyncio.run(main())


def test_leaving_a_stream_early_cancels_it_and_others_go_on(engine: Engine) -> None:
    expected = engine.generate("Numbers: 0 1 2", PARAMS)[0].text

    async def early(aengine: AsyncEngine) -> None:
        async for _ in aengine.stream_outputs("The capital", SamplingParams(max_tokens=50)):
            break

    async def main() -> str:
        async with AsyncEngine(engine=engine) as aengine:
            _, text = await asyncio.gather(early(aengine), _collect(aengine, "Numbers: 0 1 2"))
            for _ in range(3):
                await asyncio.sleep(0)
            return text

    assert asyncio.run(main()) == expected
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks


def test_a_refused_request_raises_only_for_its_caller(engine: Engine) -> None:
    expected = engine.generate("The capital", PARAMS)[0].text

    async def bad(aengine: AsyncEngine) -> None:
        await asyncio.sleep(0)
        with pytest.raises(InvalidRequestError):
            await aengine.generate(list(range(3, 600)))

    async def main() -> str:
        async with AsyncEngine(engine=engine) as aengine:
            text, _ = await asyncio.gather(_collect(aengine, "The capital"), bad(aengine))
            return text

    assert asyncio.run(main()) == expected


def test_a_failing_step_surfaces_as_engine_dead(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[object]:
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine, "step", broken)

    async def main() -> None:
        async with AsyncEngine(engine=engine) as aengine:
            with pytest.raises(EngineDeadError, match="device lost"):
                await aengine.generate("The capital", PARAMS)
            with pytest.raises(EngineDeadError):
                await aengine.generate("The capital", PARAMS)

    asyncio.run(main())


class _GatedSteps:
    """Wraps ``engine.step`` so a test can hold a step open (the engine lock held)."""

    def __init__(self, engine: Engine) -> None:
        import threading

        self.inner = engine.step
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.steps = 0
        self.queued: list[int] = []  # NOTE: requests in the scheduler as each step starts
        self.engine = engine
        engine.step = self  # type: ignore[method-assign]

    def __call__(self) -> list:  # type: ignore[type-arg]
        self.steps += 1
        scheduler = self.engine.scheduler
        self.queued.append(len(scheduler.waiting) + len(scheduler.running))
        self.entered.set()
        assert self.release.wait(30), "the test never released the step"
        return self.inner()

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()

    async def held_with(self, request: Any) -> asyncio.Task[Any]:
        """Start ``request`` (a coroutine) and return once its first step is held open."""
        self.hold()
        task = asyncio.create_task(request)
        await _until(self.entered)
        return task


async def _until(event: object, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, event.wait, timeout)  # type: ignore[attr-defined]


def test_requests_arriving_during_a_step_never_block_the_event_loop(engine: Engine) -> None:
    expected = [out.text for out in engine.generate(PROMPTS, PARAMS)]
    gate = _GatedSteps(engine)

    async def main() -> tuple[list[str], int]:
        async with AsyncEngine(engine=engine) as aengine:
            # NOTE: a step is running and holds the lock
            first = await gate.held_with(_collect(aengine, PROMPTS[0]))
            later = [asyncio.create_task(_collect(aengine, p)) for p in PROMPTS[1:]]
            ticks = 0
            for _ in range(20):  # NOTE: the loop stays free while the step is held
                await asyncio.sleep(0.001)
                ticks += 1
            assert not any(task.done() for task in [first, *later])
            gate.release.set()
            return list(await asyncio.gather(first, *later)), ticks

    texts, ticks = asyncio.run(main())
    assert texts == expected
    assert ticks == 20
    assert not engine.has_unfinished_requests()


def test_an_inbox_request_joins_the_next_step(engine: Engine) -> None:
    gate = _GatedSteps(engine)

    async def main() -> int:
        async with AsyncEngine(engine=engine) as aengine:
            first = await gate.held_with(aengine.generate(PROMPTS[0], PARAMS))
            held_at = gate.steps
            second = asyncio.create_task(aengine.generate(PROMPTS[1], PARAMS))
            await asyncio.sleep(0.01)
            gate.release.set()
            await asyncio.gather(first, second)
            return held_at

    held_at = asyncio.run(main())
    # NOTE: one request in the held step; the waiting one was admitted before the next
    assert gate.queued[held_at - 1] == 1
    assert gate.queued[held_at] == 2


def test_a_refusal_from_the_inbox_reaches_only_its_caller(engine: Engine) -> None:
    expected = engine.generate(PROMPTS[0], PARAMS)[0].text
    gate = _GatedSteps(engine)
    too_long = "word " * 5000

    async def main() -> str:
        async with AsyncEngine(engine=engine) as aengine:
            first = await gate.held_with(_collect(aengine, PROMPTS[0]))
            refused = asyncio.create_task(_collect(aengine, too_long))
            await asyncio.sleep(0.01)
            gate.release.set()
            with pytest.raises(InvalidRequestError):
                await refused
            return await first

    assert asyncio.run(main()) == expected
    assert not engine.has_unfinished_requests()


def test_a_caller_leaving_while_its_request_waits_in_the_inbox_aborts_it(engine: Engine) -> None:
    gate = _GatedSteps(engine)

    async def main() -> None:
        async with AsyncEngine(engine=engine) as aengine:
            first = await gate.held_with(aengine.generate(PROMPTS[0], PARAMS))
            left = asyncio.create_task(aengine.generate(PROMPTS[1], SamplingParams(max_tokens=200)))
            await asyncio.sleep(0.01)
            left.cancel()
            await asyncio.gather(left, return_exceptions=True)
            gate.release.set()
            await first
            for _ in range(50):  # NOTE: the abort lands with the next step
                if not engine.has_unfinished_requests():
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert not engine.has_unfinished_requests()


def test_closing_answers_requests_still_in_the_inbox(engine: Engine) -> None:
    gate = _GatedSteps(engine)

    async def main() -> None:
        aengine = AsyncEngine(engine=engine)
        first = await gate.held_with(aengine.generate(PROMPTS[0], PARAMS))
        waiting = asyncio.create_task(aengine.generate(PROMPTS[1], PARAMS))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(aengine.close())
        await asyncio.sleep(0.01)
        with pytest.raises(EngineDeadError, match="closed"):
            await waiting
        assert not closing.done()  # NOTE: its aborts wait for the held step, off the loop
        gate.release.set()
        await closing
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)

    asyncio.run(main())
    engine.step()  # NOTE: an abort's final output comes with the next step
    assert not engine.has_unfinished_requests()


def test_an_adapter_removed_after_a_request_was_sent_still_serves_it(
    engine: Engine, tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from tests.serve.serve_lora_factory import make_peft_adapter

    base = tiny_checkpoints["mistral"]
    folder = make_peft_adapter(base, tmp_path / "x", r=4, targets=["q_proj", "v_proj"], seed=3)
    params = SamplingParams(max_tokens=6, ignore_eos=True, adapter="x")
    reference = Engine(base, EngineConfig(block_size=4, num_blocks=64))
    reference.add_adapter("x", folder)
    expected = reference.generate(PROMPTS[1], params)[0].text
    engine.add_adapter("x", folder)
    gate = _GatedSteps(engine)

    async def main() -> str:
        async with AsyncEngine(engine=engine) as aengine:
            first = await gate.held_with(aengine.generate(PROMPTS[0], PARAMS))
            sent = asyncio.create_task(_collect(aengine, PROMPTS[1], params))
            await asyncio.sleep(0.01)  # NOTE: in the inbox: a step holds the engine
            removal = asyncio.create_task(aengine.remove_adapter("x"))
            await asyncio.sleep(0.01)
            gate.release.set()
            await asyncio.gather(first, removal)
            return await sent

    assert asyncio.run(main()) == expected
    assert engine.adapters is not None
    assert "x" not in engine.adapters.registry.names
