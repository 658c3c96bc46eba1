"""The public surface of openledger.serve is pinned; the bookkeeping stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import openledger.serve

PUBLIC = [
    "AsyncEngine",
    "Engine",
    "EngineConfig",
    "FinishReason",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "merge_adapters",
]


def test_public_api_is_pinned() -> None:
    assert sorted(openledger.serve.__all__) == PUBLIC
    assert all(hasattr(openledger.serve, name) for name in PUBLIC)


def test_scheduler_and_block_pool_work_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from openledger.serve import SamplingParams\n"
        "from openledger.serve.block_pool import BlockPool\n"
        "from openledger.serve.scheduler import Scheduler\n"
        "from openledger.serve.sequence import SequenceState\n"
        "pool = BlockPool(4, 2); s = Scheduler(pool, max_num_seqs=2, max_num_batched_tokens=8)\n"
        "s.add(SequenceState(0, [1, 2, 3], 3, SamplingParams(), 8))\n"
        "assert s.schedule().is_prefill\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
