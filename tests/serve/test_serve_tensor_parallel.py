"""Tensor parallelism over gloo on CPU: a model split over worker processes gives the
tokens and (within the summation-order drift) the log-probabilities of the same model in
one process, adapters included; bad sizes are refused; workers never outlive the engine.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.serve.serve_lora_factory import make_peft_adapter  # noqa: E402

from openledger.exceptions import ConfigError, EngineDeadError  # noqa: E402
from openledger.models import save_tiny_model  # noqa: E402
from openledger.serve import Engine, EngineConfig, RequestOutput, SamplingParams  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEW = 24
FP32_EPS = torch.finfo(torch.float32).eps


def logprob_tolerance(reduction: int, num_layers: int) -> float:
    """Bound on a log-probability's change when partial sums are added in another order.

    Each layer's outputs are dot products of length ``reduction`` (the widest: the MLP's
    ``intermediate_size``), whose float32 rounding is at most ``reduction * eps`` of the
    magnitude summed; splitting them into per-rank partial sums reorders that rounding,
    once per layer, and a log-softmax at most doubles a logit's change. The factor 4
    covers the two projections per block summed this way (attention and MLP) twice.
    """
    return 4 * 2 * reduction * num_layers * FP32_EPS


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints: Qwen2 (grouped-query attention 4/2, q/k/v biases, tied head),
    Llama with every bias (o and down too: the row-parallel bias) and its own head,
    Phi-3 (fused qkv/gate_up tensors in the checkpoint)."""
    root = tmp_path_factory.mktemp("tp-models")
    qwen2 = save_tiny_model(root / "qwen2", "qwen2", seed=11)
    llama = save_tiny_model(
        root / "llama-bias", "llama", seed=12, attention_bias=True, mlp_bias=True
    )
    _randomise_biases(llama)
    return {"qwen2": qwen2, "llama-bias": llama, "phi3": save_tiny_model(root / "phi3", "phi3")}


def _randomise_biases(folder: Path) -> None:
    """Non-zero biases (transformers starts them at zero), so that adding the row-parallel
    bias on every rank instead of once would change the outputs."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(5)
    for name, tensor in tensors.items():
        if name.endswith(".bias"):
            tensors[name] = torch.randn(tensor.shape, generator=generator) * 0.5
    save_file(tensors, path, metadata={"format": "pt"})


ADAPTERS: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2": {
        "every": {"r": 8, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"]},
        "some": {"r": 4, "targets": ["v_proj", "down_proj", "up_proj"], "use_rslora": True},
    },
    "llama-bias": {
        "every": {"r": 8, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"]},
        "heads": {"r": 4, "targets": ["k_proj", "o_proj"],
                  "modules_to_save": ["lm_head", "embed_tokens"]},
    },
    "phi3": {},
}  # fmt: skip


def _prompts(adapters: list[str]) -> list[tuple[list[int], str | None]]:
    """One prompt for the base and for each adapter, then prompts of other lengths (one
    longer than a step's token budget: computed in chunks) spread over them."""
    names: list[str | None] = [None, *adapters]
    same = [([5, 9, 33, 70, 101], name) for name in names]
    others = [list(range(40, 77)), [7, 8], list(range(200, 213))]
    return same + [(prompt, names[(i + 1) % len(names)]) for i, prompt in enumerate(others)]


def _run(
    folder: Path,
    adapters: dict[str, Path],
    prompts: list[tuple[list[int], str | None]],
    **config: Any,
) -> tuple[list[RequestOutput], Engine]:
    engine = Engine(
        folder,
        EngineConfig(num_blocks=96, block_size=4, max_num_seqs=4, max_num_batched_tokens=32,
                     **config),
    )  # fmt: skip
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    params = [
        SamplingParams(max_tokens=NEW, ignore_eos=True, logprobs=3, adapter=name)
        for _, name in prompts
    ]
    return engine.generate([p for p, _ in prompts], params), engine


def _assert_same(
    one: list[RequestOutput], split: list[RequestOutput], tolerance: float, label: str
) -> None:
    for i, (a, b) in enumerate(zip(one, split, strict=True)):
        assert b.token_ids == a.token_ids, f"{label} prompt {i}"
        assert a.logprobs is not None
        assert b.logprobs is not None
        for step, (x, y) in enumerate(zip(a.logprobs, b.logprobs, strict=True)):
            assert x.keys() == y.keys(), f"{label} prompt {i} step {step}: top tokens differ"
            worst = max(abs(x[t] - y[t]) for t in x)
            assert worst <= tolerance, f"{label} prompt {i} step {step}: {worst} > {tolerance}"


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie awaiting its reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pids: list[int], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return all(_gone(pid) for pid in pids)


@pytest.mark.parametrize("name", ["qwen2", "llama-bias", "phi3"])
def test_size_two_matches_size_one_with_adapters_and_close_stops_it(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    folder = models[name]
    adapters = {
        adapter: make_peft_adapter(folder, tmp_path / adapter, seed=i + 1, r=spec["r"],
                                   targets=spec["targets"],
                                   **{k: v for k, v in spec.items() if k not in ("r", "targets")})
        for i, (adapter, spec) in enumerate(ADAPTERS[name].items())
    }  # fmt: skip
    prompts = _prompts(list(adapters))
    one, base = _run(folder, adapters, prompts)
    config = base.model_config
    split, engine = _run(folder, adapters, prompts, tensor_parallel_size=2)
    try:
        pids = engine.runner.group.pids  # type: ignore[attr-defined]
        assert len(pids) == 1
        assert not _gone(pids[0])
        # NOTE: each adapter changes the base's tokens, so equal tokens are no accident
        for k in range(1, len(adapters) + 1):
            assert one[k].token_ids != one[0].token_ids, f"adapter {k} changes nothing"
        tolerance = logprob_tolerance(config.intermediate_size, config.num_layers)
        _assert_same(one, split, tolerance, name)
        if name == "qwen2":
            dora = make_peft_adapter(folder, tmp_path / "dora", r=2, targets=["q_proj"], seed=9,
                                     use_dora=True)  # fmt: skip
            with pytest.raises(ConfigError, match="DoRA adapters are not served with tensor_par"):
                engine.add_adapter("dora", dora)
        engine.close()
        assert _wait_gone(pids, 1.0), "close() returned with a live worker"
        engine.close()  # idempotent
        with pytest.raises(EngineDeadError, match="closed"):
            engine.generate([[5, 6, 7]], SamplingParams(max_tokens=2))
    finally:
        engine.close()


def test_garbage_collecting_the_engine_stops_its_worker(models: dict[str, Path]) -> None:
    engine = Engine(models["qwen2"], EngineConfig(num_blocks=16, tensor_parallel_size=2))
    pids = engine.runner.group.pids  # type: ignore[attr-defined]
    del engine
    gc.collect()
    assert _wait_gone(pids, 6.0), "a collected engine left its worker running"


def test_closing_an_async_engine_stops_the_workers(models: dict[str, Path]) -> None:
    import asyncio

    from openledger.serve import AsyncEngine

    engine = Engine(models["qwen2"], EngineConfig(num_blocks=16, tensor_parallel_size=2))
    pids = engine.runner.group.pids  # type: ignore[attr-defined]

    async def serve_then_close() -> list[int]:
        async with AsyncEngine(engine=engine) as served:
            output = await served.generate([5, 6, 7], SamplingParams(max_tokens=3))
        return output.token_ids

    assert len(asyncio.run(serve_then_close())) == 3
    assert _wait_gone(pids, 6.0), "AsyncEngine.close() left a worker running"


def test_refused_sizes_name_the_numbers(models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as caught:
        Engine(models["qwen2"], EngineConfig(tensor_parallel_size=5))
    message = str(caught.value)
    for part in ("tensor_parallel_size=5", "4 attention heads", "2 key/value heads",
                 "128 MLP columns", "384 vocabulary rows"):  # fmt: skip
        assert part in message
    with pytest.raises(ConfigError, match="key/value heads") as caught:
        Engine(models["qwen2"], EngineConfig(tensor_parallel_size=4, num_blocks=8))
    assert "attention heads" not in str(caught.value)  # 4 heads split 4 ways
    with pytest.raises(ConfigError, match="quantization='int8' with tensor_parallel_size=2"):
        Engine(models["qwen2"], EngineConfig(tensor_parallel_size=2, quantization="int8"))
    with pytest.raises(ConfigError, match="cuda_graphs=True with tensor_parallel_size=2"):
        Engine(models["qwen2"], EngineConfig(tensor_parallel_size=2, cuda_graphs=True))
    with pytest.raises(ConfigError, match="max_adapter_slots=1 is below max_num_seqs=2"):
        Engine(
            models["qwen2"],
            EngineConfig(tensor_parallel_size=2, max_num_seqs=2, max_adapter_slots=1, num_blocks=8),
        )


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``call`` in a thread; the list gets its exception."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            caught.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, caught


def _bounded(call: Callable[[], object], within_s: float) -> BaseException | None:
    """``call``'s exception; fails if it still runs after ``within_s`` (a hang)."""
    thread, caught = _in_thread(call)
    thread.join(within_s)
    assert not thread.is_alive(), f"still running after {within_s} s"
    return caught[0] if caught else None


def test_a_dead_worker_fails_the_engine_with_a_clear_error(models: dict[str, Path]) -> None:
    engine = Engine(models["qwen2"], EngineConfig(num_blocks=32, tensor_parallel_size=2))
    try:
        (pid,) = engine.runner.group.pids  # type: ignore[attr-defined]
        stream = engine.stream_outputs([5, 6, 7], SamplingParams(max_tokens=40, ignore_eos=True))
        next(stream)
        os.kill(pid, signal.SIGKILL)
        error = _bounded(lambda: list(stream), within_s=30)
        assert isinstance(error, EngineDeadError)
        assert f"rank 1 (pid {pid}) was killed by signal 9" in str(error)
        again = _bounded(lambda: engine.generate([[1, 2]], SamplingParams(max_tokens=2)), 30)
        assert isinstance(again, EngineDeadError)
    finally:
        engine.close()


def test_a_worker_dying_inside_a_collective_fails_the_step(models: dict[str, Path]) -> None:
    """Rank 0 waits in an all-reduce on a stopped worker; killing the worker ends the wait
    with an error naming it (gloo sees the closed connection), not a hang."""
    engine = Engine(models["qwen2"], EngineConfig(num_blocks=32, tensor_parallel_size=2))
    try:
        (pid,) = engine.runner.group.pids  # type: ignore[attr-defined]
        engine.generate([[5, 6, 7]], SamplingParams(max_tokens=2))
        os.kill(pid, signal.SIGSTOP)
        thread, caught = _in_thread(
            lambda: engine.generate([[5, 6, 7]], SamplingParams(max_tokens=4))
        )
        thread.join(0.5)
        assert thread.is_alive(), "the step did not wait for the stopped worker"
        os.kill(pid, signal.SIGKILL)
        thread.join(30)
        assert not thread.is_alive(), "rank 0 still waits for a dead worker"
        assert len(caught) == 1
        assert isinstance(caught[0], EngineDeadError)
        assert f"rank 1 (pid {pid}) was killed by signal 9" in str(caught[0])
    finally:
        engine.close()


def test_killing_the_engine_process_leaves_no_worker(models: dict[str, Path]) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from openledger.serve import Engine, EngineConfig
        config = EngineConfig(num_blocks=16, tensor_parallel_size=2)
        engine = Engine({str(models["qwen2"])!r}, config)
        print(*engine.runner.group.pids, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 1, line
        assert not _gone(pids[0])
        parent.kill()  # SIGKILL: no finalizer, no atexit
        parent.wait(10)
        assert _wait_gone(pids, 5.0), f"worker {pids} outlived its engine's process"
    finally:
        parent.kill()
        parent.wait(10)


def test_smollm2_split_three_ways_matches_one_process(smollm2_dir: Path, tmp_path: Path) -> None:
    """SmolLM2-135M has 9 heads and 3 KV heads: 2 ranks are refused, 3 serve it."""
    with pytest.raises(ConfigError, match=r"9 attention heads .*, 3 key/value heads"):
        Engine(smollm2_dir, EngineConfig(tensor_parallel_size=2, num_blocks=8))
    adapter = make_peft_adapter(smollm2_dir, tmp_path / "smol", r=8, seed=3,
                                targets=["q_proj", "v_proj", "o_proj", "down_proj"])  # fmt: skip
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompts: list[Any] = [chat, "Once upon a time", "Once upon a time"]
    names = [None, None, "smol"]

    def run(**config: Any) -> tuple[list[RequestOutput], Engine]:
        engine = Engine(smollm2_dir, EngineConfig(num_blocks=64, max_num_seqs=4, **config))
        engine.add_adapter("smol", adapter)
        params = [SamplingParams(max_tokens=16, logprobs=2, adapter=n) for n in names]
        return engine.generate(prompts, params), engine

    one, base = run()
    config = base.model_config
    del base
    split, engine = run(tensor_parallel_size=3)
    try:
        assert one[0].text == "The capital of France is Paris."
        assert one[2].token_ids != one[1].token_ids  # the adapter changes them
        _assert_same(one, split, logprob_tolerance(config.intermediate_size, config.num_layers),
                     "smollm2")  # fmt: skip
    finally:
        engine.close()


ROUNDING = 16 * torch.finfo(torch.float64).eps
"""float64 rounding of the few-term sums of products of unit normals in :func:`_dense`
(the same products either way; a matmul of another shape may order them differently)."""


def _dense(weights: Any, rows: int) -> Any:
    """The update ``[rows, in]`` that ``weights`` adds: ``B_s A_s`` in each slice's rows."""
    update = torch.zeros(rows, weights.a.shape[1], dtype=torch.float64)
    for s in weights.slices:
        update[s.col_start : s.col_end] += (
            s.b.double() @ weights.a[s.rank_start : s.rank_end].double()
        )
    return update


@pytest.mark.parametrize("size", [2, 4])
def test_split_lora_updates_add_up_to_the_whole(size: int) -> None:
    """Each rank's part of an update is the whole update's rows (column-parallel) or
    columns (row-parallel) of that rank, for slices per q/k/v, one fused slice over all
    three (the layout CPU backends use) and a slice over part of one."""
    from openledger.serve.layers.linear import Linear
    from openledger.serve.ops.lora_torch import LoraSlice, LoraWeights, fuse_expand
    from openledger.serve.parallel.lora import shard_lora_weights

    generator = torch.Generator().manual_seed(size)

    def rand(*shape: int) -> Any:
        return torch.randn(*shape, generator=generator)

    hidden, sizes = 8, (16, 8, 8)  # q, k, v rows of the whole projection
    starts = [0, 16, 24, 32]
    per_part = LoraWeights(
        rand(9, hidden),
        tuple(LoraSlice(3 * j, 3 * j + 3, starts[j], starts[j + 1], rand(sizes[j], 3))
              for j in range(3)),
    )  # fmt: skip
    partial = LoraWeights(rand(2, hidden), (LoraSlice(0, 2, 4, 14, rand(10, 2)),))
    for whole in (per_part, fuse_expand(per_part), partial):
        expected = _dense(whole, 32)
        local = Linear(hidden, [n // size for n in sizes])
        for rank in range(size):
            got = _dense(shard_lora_weights(whole, local, "qkv_proj", rank, size), 32 // size)
            rows = [expected[starts[j] : starts[j + 1]].chunk(size)[rank] for j in range(3)]
            torch.testing.assert_close(got, torch.cat(rows), rtol=0, atol=ROUNDING)
    down = LoraWeights(rand(4, 16), (LoraSlice(0, 4, 0, hidden, rand(hidden, 4)),))
    local = Linear(16 // size, [hidden])
    parts = [
        _dense(shard_lora_weights(down, local, "down_proj", rank, size), hidden)
        for rank in range(size)
    ]
    torch.testing.assert_close(torch.cat(parts, dim=1), _dense(down, hidden), rtol=0, atol=ROUNDING)
