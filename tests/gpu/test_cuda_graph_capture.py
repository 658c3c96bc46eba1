"""``CudaGraphCapture`` and the engine's recordings on a real GPU (skipped without CUDA).

The CPU stand-ins of tests/serve/graph_doubles.py check the recording logic everywhere;
this checks what only a GPU has: ``torch.cuda.CUDAGraph`` recordings in one shared pool,
replayed with new buffer contents, and an engine recording its steps in the worker thread
of an ``AsyncEngine``.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton"),
]


def test_recordings_in_one_pool_replay_with_new_buffer_contents() -> None:
    from openledger.serve.cuda_graphs import CudaGraphCapture

    device = torch.device("cuda")
    capture = CudaGraphCapture(device)
    weight = torch.randn(64, 64, device=device)
    small, large = torch.zeros(2, 64, device=device), torch.zeros(8, 64, device=device)
    calls = {"small": 0, "large": 0}

    def forward(buffer: torch.Tensor, name: str) -> torch.Tensor:
        calls[name] += 1
        return torch.relu(buffer @ weight) + 1.0

    replay_large = capture.capture(lambda: forward(large, "large"))
    replay_small = capture.capture(lambda: forward(small, "small"))
    assert calls == {"small": 3, "large": 3}  # two warm-ups and the recording each
    for _ in range(3):
        large.copy_(torch.randn(8, 64, device=device))
        small.copy_(torch.randn(2, 64, device=device))
        got_large = replay_large().clone()
        got_small = replay_small().clone()
        torch.testing.assert_close(got_large, torch.relu(large @ weight) + 1.0)
        torch.testing.assert_close(got_small, torch.relu(small @ weight) + 1.0)
    assert calls == {"small": 3, "large": 3}  # replays run no Python


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from openledger.models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("graph-capture") / "llama", "llama", seed=5)


def test_an_async_engine_records_and_replays_in_its_worker_thread(folder: Path) -> None:
    """Eight concurrent streams (buckets 8 down to 1) give the tokens of an engine that
    runs every step eagerly (float32, greedy)."""
    from openledger.serve import AsyncEngine, Engine, EngineConfig, SamplingParams

    config = EngineConfig(device="cuda", dtype="float32", block_size=16, num_blocks=64)
    prompts = [[5 + i, 9, 33, 7 + 2 * i] * (1 + i % 3) for i in range(8)]
    params = [SamplingParams(max_tokens=4 + 2 * i, min_tokens=4 + 2 * i) for i in range(8)]
    eager = Engine(folder, config)
    eager.runner.graphs = None
    want = [o.token_ids for o in eager.generate(prompts, params)]
    engine = Engine(folder, config)
    graphs = engine.runner.graphs
    assert graphs is not None, engine.runner.graphs_off_reason

    async def run() -> list[list[int]]:
        async with AsyncEngine(engine=engine) as served:
            outputs = await asyncio.gather(
                *(served.generate(p, s) for p, s in zip(prompts, params, strict=True))
            )
        return [o.token_ids for o in outputs]

    assert asyncio.run(run()) == want
    assert graphs.stats.replayed > 0
    assert {size for size, _ in graphs.graph_keys()} >= {1, 2}
