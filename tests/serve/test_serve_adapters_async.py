"""Adapters added, removed and replaced through AsyncEngine while requests stream.

A hypothesis-driven stream of requests interleaved with adapter changes: every admitted
request finishes with the tokens of the adapter it was admitted with (checked against
the sync engine) and that adapter's id in its usage; requests naming an absent adapter
are refused at once; no adapter change lands while a step runs; nothing leaks.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tests.serve.serve_lora_factory import make_peft_adapter  # noqa: E402

from openledger.crypto import keccak256_hex  # noqa: E402
from openledger.exceptions import AdapterNotFoundError, ConfigError  # noqa: E402
from openledger.models import save_tiny_model  # noqa: E402
from openledger.serve import AsyncEngine, Engine, EngineConfig, SamplingParams  # noqa: E402

NEW = 4
PROMPTS = [[5, 9, 13, 2], [7, 7, 1]]


def manifested(base: Path, out: Path, seed: int) -> Path:
    folder = make_peft_adapter(base, out, r=4, targets=["q_proj", "v_proj", "down_proj"], seed=seed)
    weights = (folder / "adapter_model.safetensors").read_bytes()
    manifest = {"adapter_id": keccak256_hex(weights), "base_model": "tiny"}
    (folder / "openledger_manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("async-adapters")
    base = save_tiny_model(root / "base", "llama", seed=5)
    folders = [manifested(base, root / f"f{i}", seed=40 + i) for i in range(2)]
    engine = Engine(base, EngineConfig(max_num_seqs=4, block_size=4, num_blocks=96))
    expected: dict[tuple[int, int | None], list[int]] = {}
    for index, folder in [(None, None), *enumerate(folders)]:
        if folder is not None:
            engine.add_adapter("ref", folder)
        for p, prompt in enumerate(PROMPTS):
            params = SamplingParams(
                max_tokens=NEW, ignore_eos=True, adapter=None if folder is None else "ref"
            )
            expected[(p, index)] = engine.generate([prompt], params)[0].token_ids
        if folder is not None:
            engine.remove_adapter("ref")
    ids = [keccak256_hex((f / "adapter_model.safetensors").read_bytes()) for f in folders]
    violations = watch_steps(engine)
    return {"engine": engine, "folders": folders, "expected": expected, "ids": ids,
            "violations": violations}  # fmt: skip


def watch_steps(engine: Engine) -> list[str]:
    """Record any adapter change that lands while a forward pass runs."""
    store = engine.adapters
    assert store is not None
    violations: list[str] = []
    real_run = engine.runner.run

    def run(*args: Any) -> Any:
        before = (dict(store.registry.names), store.slots.resident())
        time.sleep(0.002)  # NOTE: widens the window an unlocked change would hit
        out = real_run(*args)
        if (dict(store.registry.names), store.slots.resident()) != before:
            violations.append(f"{before} -> {store.registry.names}")
        return out

    engine.runner.run = run  # type: ignore[method-assign]
    return violations


Op = tuple[str, str | None, int]
OPS = st.one_of(
    st.tuples(st.just("request"), st.sampled_from(["x", "y", None]), st.integers(0, 1)),
    st.tuples(st.just("add"), st.sampled_from(["x", "y"]), st.integers(0, 1)),
    st.tuples(st.just("remove"), st.sampled_from(["x", "y"]), st.just(0)),
    st.tuples(st.just("replace"), st.sampled_from(["x", "y"]), st.integers(0, 1)),
    st.tuples(st.just("pause"), st.none(), st.integers(1, 3)),
)


async def play(setup: dict[str, Any], ops: list[Op]) -> None:
    registered: dict[str, int] = {}
    pending: list[tuple[asyncio.Task[Any], list[int], tuple[str | None, ...]]] = []
    folders, ids = setup["folders"], setup["ids"]
    async with AsyncEngine(engine=setup["engine"]) as aengine:
        for op, name, arg in ops:
            if op == "request":
                params = SamplingParams(max_tokens=NEW, ignore_eos=True, adapter=name)
                if name is not None and name not in registered:
                    with pytest.raises(AdapterNotFoundError):
                        await aengine.generate(PROMPTS[arg], params)
                    continue
                index = None if name is None else registered[name]
                task = asyncio.create_task(aengine.generate(PROMPTS[arg], params))
                await asyncio.sleep(0)  # NOTE: the task is admitted before the next op
                want_ids = () if index is None else (ids[index],)
                pending.append((task, setup["expected"][(arg, index)], want_ids))
            elif op == "pause":
                await asyncio.sleep(0.005 * arg)
            else:
                assert name is not None
                await change(aengine, registered, op, name, folders, arg)
        finals = await asyncio.wait_for(asyncio.gather(*(t for t, _, _ in pending)), 120)
        for name in list(registered):
            await aengine.remove_adapter(name)
    for final, (_, tokens, want_ids) in zip(finals, pending, strict=True):
        assert final.finish_reason == "length"
        assert final.token_ids == tokens
        assert len(tokens) == NEW
        assert final.usage.adapter_ids == want_ids


async def change(
    aengine: AsyncEngine,
    registered: dict[str, int],
    op: str,
    name: str,
    folders: list[Path],
    arg: int,
) -> None:
    if op == "add" and name in registered:
        with pytest.raises(ConfigError, match="registered"):
            await aengine.add_adapter(name, folders[arg])
    elif op == "remove" and name not in registered:
        with pytest.raises(AdapterNotFoundError):
            await aengine.remove_adapter(name)
    elif op == "replace" and name not in registered:
        with pytest.raises(AdapterNotFoundError):
            await aengine.replace_adapter(name, folders[arg])
    elif op == "remove":
        await aengine.remove_adapter(name)
        del registered[name]
    else:
        method = aengine.add_adapter if op == "add" else aengine.replace_adapter
        await method(name, folders[arg])
        registered[name] = arg


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=1, max_size=10))
def test_adapter_changes_during_a_request_stream_lose_no_request(
    setup: dict[str, Any], ops: list[Op]
) -> None:
    asyncio.run(play(setup, ops))
    store = setup["engine"].adapters
    assert setup["violations"] == []
    assert store.registry.refs == {}  # nothing leaked
    assert store.registry.specs == {}
    assert len(store) == 0
    assert store.host_bytes == 0


def test_a_replaced_adapter_finishes_its_running_request_with_the_old_weights(
    setup: dict[str, Any],
) -> None:
    folders, expected, ids = setup["folders"], setup["expected"], setup["ids"]

    async def main() -> tuple[Any, Any]:
        async with AsyncEngine(engine=setup["engine"]) as aengine:
            await aengine.add_adapter("x", folders[0])
            params = SamplingParams(max_tokens=NEW, ignore_eos=True, adapter="x")
            stream = aengine.stream_outputs(PROMPTS[0], params)
            first = await stream.__anext__()  # running with the first registration
            assert not first.finished
            await aengine.replace_adapter("x", folders[1])
            old = [out async for out in stream][-1]
            new = await aengine.generate(PROMPTS[0], params)
            await aengine.remove_adapter("x")
            return old, new

    old, new = asyncio.run(main())
    assert old.token_ids == expected[(0, 0)]
    assert old.usage.adapter_ids == (ids[0],)
    assert new.token_ids == expected[(0, 1)]
    assert new.usage.adapter_ids == (ids[1],)
    assert setup["engine"].adapters.registry.specs == {}
    assert setup["violations"] == []
