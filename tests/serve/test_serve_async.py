"""AsyncEngine: concurrent streams, cancellation, refused requests, a failing step loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from openledger.exceptions import EngineDeadError, InvalidRequestError
from openledger.serve import AsyncEngine, Engine, EngineConfig, SamplingParams

PARAMS = SamplingParams(max_tokens=10, ignore_eos=True)
PROMPTS = ["The capital", "Numbers: 0 1 2", "def add(a, b):"]


@pytest.fixture
def engine(tiny_checkpoints: dict[str, Path]) -> Engine:
    return Engine(tiny_checkpoints["mistral"], EngineConfig(block_size=4, num_blocks=64))


async def _collect(aengine: AsyncEngine, prompt: str) -> str:
    return "".join([piece async for piece in aengine.stream(prompt, PARAMS)])


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
