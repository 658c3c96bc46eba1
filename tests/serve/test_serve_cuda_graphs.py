"""Decode steps replayed from recordings (openledger.serve.cuda_graphs), checked on CPU.

A CUDA graph needs a GPU; what it does does not. The engine here records its decode steps
with the CPU stand-ins of tests/serve/graph_doubles.py: :class:`RecordedCapture` replays
the recorded torch ops on the recorded tensors with nothing decided again on the host, as
a CUDA graph does, and :class:`RerunCapture` runs the step again on the static buffers
(for the Triton LoRA kernels, run by the interpreter). Each engine is compared with the
same engine running every step eagerly: the same tokens, and log-probabilities within
float32 rounding (the replayed steps are padded up to their bucket and attend over the
whole static table width, so sums may be ordered differently). The same checks on a GPU
with real graphs are in tests/gpu/test_engine_cuda.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.numerics import assert_rows_close, forward_terms
from tests.serve.graph_doubles import RecordedCapture, RerunCapture
from tests.serve.serve_lora_factory import make_peft_adapter

from openledger.exceptions import ConfigError
from openledger.serve import Engine, EngineConfig, SamplingParams
from openledger.serve.cuda_graphs import (
    GRAPH_BATCH_SIZES,
    DecodeGraphs,
    graph_batch_size,
    resolve_cuda_graphs,
)
from openledger.serve.outputs import RequestOutput

_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_CUDA = torch.device("cuda")  # NOTE: only named, never used: resolve_cuda_graphs reads its type


def test_a_step_runs_in_the_smallest_bucket_that_holds_it() -> None:
    assert GRAPH_BATCH_SIZES[:6] == (1, 2, 4, 8, 16, 24)
    assert GRAPH_BATCH_SIZES[-1] == 512
    want = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 9: 16, 16: 16, 17: 24, 64: 64, 65: 72, 512: 512}
    for n, size in want.items():
        assert graph_batch_size(n) == size
    assert graph_batch_size(513) is None
    assert graph_batch_size(3, (2, 5)) == 5
    assert graph_batch_size(6, (2, 5)) is None
    with pytest.raises(ValueError, match="at least one sequence"):
        graph_batch_size(0)


def _engine(folder: Path, **settings: Any) -> Engine:
    base = {"block_size": 4, "num_blocks": 96, "cpu_kernels": False, "max_num_seqs": 8}
    return Engine(folder, EngineConfig(**{**base, **settings}))


def test_graphs_are_resolved_from_the_device_and_the_model(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from openledger.models import save_tiny_model

    reference = _engine(tiny_checkpoints["llama"]).runner
    assert reference.graphs is None  # "auto" on a CPU device
    assert "CUDA device; this engine runs on cpu" in reference.graphs_off_reason
    model = reference.model
    assert resolve_cuda_graphs(False, _CUDA, model) == (False, "cuda_graphs=False")
    with pytest.raises(ConfigError, match="runs on cpu"):
        resolve_cuda_graphs(True, torch.device("cpu"), model)
    with pytest.raises(ConfigError, match="True, False or 'auto'"):
        resolve_cuda_graphs("on", _CUDA, model)  # type: ignore[arg-type]
    # on CUDA: "auto" needs the paged decode kernel in every layer; True gathers instead
    on, why = resolve_cuda_graphs("auto", _CUDA, model)
    assert not on
    assert "without the paged Triton kernel" in why
    assert resolve_cuda_graphs(True, _CUDA, model) == (True, "")
    paged = _engine(tiny_checkpoints["llama"], attention_backend="triton").runner.model
    assert resolve_cuda_graphs("auto", _CUDA, paged) == (True, "")
    # the runner's keyword: True where graphs cannot run is refused when it is built
    from openledger.serve.model_runner import ModelRunner
    from openledger.serve.models.config import ModelConfig

    folder = tiny_checkpoints["llama"]
    with pytest.raises(ConfigError, match=r"cuda_graphs=True cannot be served.*runs on cpu"):
        ModelRunner(folder, ModelConfig.from_folder(folder), dtype=torch.float32,
                    device=torch.device("cpu"), num_blocks=8, block_size=4, max_positions=64,
                    backend="reference", cuda_graphs=True)  # fmt: skip
    # and the engine's setting reaches it
    with pytest.raises(ConfigError, match=r"cuda_graphs=True cannot be served.*runs on cpu"):
        Engine(folder, EngineConfig(num_blocks=8, cuda_graphs=True))
    assert Engine(folder, EngineConfig(num_blocks=8, cuda_graphs=False)).runner.graphs is None
    # LongRoPE (Phi-3) picks table rows on the host: refused, or off under "auto"
    phi3 = _engine(save_tiny_model(tmp_path / "phi3", "phi3", seed=1)).runner.model
    with pytest.raises(ConfigError, match="LongRoPE"):
        resolve_cuda_graphs(True, _CUDA, phi3)
    assert resolve_cuda_graphs("auto", _CUDA, phi3)[0] is False


def test_bad_bucket_lists_are_refused(tiny_checkpoints: dict[str, Path]) -> None:
    runner = _engine(tiny_checkpoints["llama"]).runner
    for sizes in ((), (4, 2), (0, 4), (2, 2)):
        with pytest.raises(ValueError, match="positive and ascending"):
            runner.enable_decode_graphs(RecordedCapture(), sizes)


Call = tuple[list[int], bool]


def _spy(graphs: DecodeGraphs, tables: set[int] | None = None) -> list[Call]:
    """Record each step's token counts and whether it was replayed (and the blocks used)."""
    calls: list[Call] = []
    real = graphs.run

    def run(seqs: Sequence[Any], num_new_tokens: Sequence[int], lora: Any) -> Any:
        if tables is not None:
            tables.update(b for seq in seqs for b in seq.block_table)
        out = real(seqs, num_new_tokens, lora)
        calls.append((list(num_new_tokens), out is not None))
        return out

    graphs.run = run  # type: ignore[method-assign]
    return calls


def _logprobs(output: RequestOutput, vocab: int) -> torch.Tensor:
    assert output.logprobs is not None
    return torch.tensor([[row[t] for t in range(vocab)] for row in output.logprobs])


def _assert_same(
    got: list[RequestOutput], want: list[RequestOutput], folder: Path, tokens: int
) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    terms = 2 * (forward_terms(config, tokens) + config.hidden_size + config.vocab_size)
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert_rows_close(
            _logprobs(g, config.vocab_size),
            _logprobs(w, config.vocab_size),
            dtype=torch.float32,
            terms=terms,
        )


def _requests(
    count: int, vocab: int, *, seed: int, step: int = 2
) -> tuple[list[list[int]], list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = [3 + step * i for i in range(count)]  # NOTE: the batch shrinks step by step
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]
    return prompts, lengths


@pytest.mark.parametrize(("family", "kernels"), [("llama", False), ("mistral-window", False),
                                                 ("qwen2", True)])  # fmt: skip
def test_replayed_decode_steps_give_the_eager_tokens_and_logprobs(
    tiny_checkpoints: dict[str, Path], family: str, kernels: bool
) -> None:
    """Six requests finishing one after another (padded up to buckets 4, 2, 1), a long prompt
    chunked beside decode steps (mixed steps: eager), a sliding window (mistral-window:
    the masks of the recorded plan), q/k/v biases and the compiled CPU kernels (qwen2)."""
    folder = tiny_checkpoints[family]
    settings = {"max_num_batched_tokens": 16, "cpu_kernels": kernels}
    eager, replayed = _engine(folder, **settings), _engine(folder, **settings)
    capture = RecordedCapture()
    graphs = replayed.runner.enable_decode_graphs(capture)
    used: set[int] = set()
    calls = _spy(graphs, used)
    vocab = eager.model_config.vocab_size
    prompts, lengths = _requests(6, vocab, seed=3)
    prompts.append(list(range(5, 45)))  # 40 tokens: chunked over several mixed steps
    lengths.append(6)
    params = [SamplingParams(max_tokens=n, min_tokens=n, logprobs=vocab) for n in lengths]
    _assert_same(replayed.generate(prompts, params), eager.generate(prompts, params), folder, 60)

    assert all(replay == all(n == 1 for n in counts) for counts, replay in calls)
    assert any(len(set(counts)) > 1 for counts, _ in calls)  # mixed steps ran (eagerly)
    assert {size for size, _ in graphs.graph_keys()} >= {1, 2, 4}
    assert any(replay and len(counts) not in GRAPH_BATCH_SIZES for counts, replay in calls)
    assert graphs.stats.replayed == sum(replay for _, replay in calls) == capture.replays
    assert capture.recordings == len(graphs.stats.captured)
    # padding rows wrote into the scratch block only: blocks never handed out stay zero
    runner = replayed.runner
    for layer in runner.model.attention_layers():
        assert layer.k_cache.shape[0] == runner.scratch_block + 1
        untouched = [b for b in range(runner.scratch_block) if b not in used]
        assert untouched
        assert not layer.k_cache[untouched].any()
        assert layer.k_cache[runner.scratch_block].any()


def test_replayed_steps_with_the_triton_decode_kernel_read_only_tables_and_lengths(
    tiny_checkpoints: dict[str, Path],
) -> None:
    """The CUDA default: paged Triton decode attention (the interpreter here), whose
    recorded plan holds no gathered keys or masks, only the static tables and lengths."""
    folder = tiny_checkpoints["mistral-window"]
    eager = _engine(folder)  # NOTE: the reference attention: the interpreter is slow
    replayed = _engine(folder, attention_backend="triton")
    graphs = replayed.runner.enable_decode_graphs(RerunCapture())
    assert not graphs.gathers
    vocab = eager.model_config.vocab_size
    prompts, lengths = _requests(3, vocab, seed=7, step=1)
    params = [SamplingParams(max_tokens=n, min_tokens=n, logprobs=vocab) for n in lengths]
    _assert_same(replayed.generate(prompts, params), eager.generate(prompts, params), folder, 20)
    assert {size for size, _ in graphs.graph_keys()} == {1, 2, 4}


def test_a_step_larger_than_the_largest_bucket_runs_eagerly(
    tiny_checkpoints: dict[str, Path],
) -> None:
    folder = tiny_checkpoints["llama"]
    eager, replayed = _engine(folder), _engine(folder)
    graphs = replayed.runner.enable_decode_graphs(RecordedCapture(), (1, 2))
    calls = _spy(graphs)
    vocab = eager.model_config.vocab_size
    prompts, lengths = _requests(4, vocab, seed=5)
    params = [SamplingParams(max_tokens=n, min_tokens=n, logprobs=vocab) for n in lengths]
    _assert_same(replayed.generate(prompts, params), eager.generate(prompts, params), folder, 20)
    decode = [(counts, replay) for counts, replay in calls if set(counts) == {1}]
    assert all(replay == (len(counts) <= 2) for counts, replay in decode)
    assert graphs.stats.eager_decode == sum(not replay for _, replay in decode) > 0


@pytest.fixture(scope="module")
def adapters(
    tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("graph-lora")
    base = tiny_checkpoints["llama"]
    return {
        "a": make_peft_adapter(base, root / "a", r=4, targets=_ALL, seed=1),
        "b": make_peft_adapter(base, root / "b", r=8, targets=["q_proj", "v_proj"], seed=2),
        "wide": make_peft_adapter(base, root / "wide", r=20, targets=["o_proj"], seed=3),
        "dora": make_peft_adapter(base, root / "dora", r=4, targets=_ALL, seed=4, use_dora=True),
        "head": make_peft_adapter(
            base, root / "head", r=4, targets=["q_proj"], seed=5, modules_to_save=["lm_head"]
        ),
    }


def _lora_run(
    engine: Engine, names: dict[str, Path], batches: list[list[str | None]]
) -> list[list[RequestOutput]]:
    vocab = engine.model_config.vocab_size
    for name, folder in names.items():
        engine.add_adapter(name, folder)
    outputs = []
    for index, choices in enumerate(batches):
        prompts, lengths = _requests(len(choices), vocab, seed=10 + index, step=1)
        params = [
            SamplingParams(max_tokens=n, min_tokens=n, adapter=c, logprobs=vocab)
            for n, c in zip(lengths, choices, strict=True)
        ]
        outputs.append(engine.generate(prompts, params))
    return outputs


def test_triton_lora_steps_replay_with_each_tokens_slot_and_rerecord_when_stacks_grow(
    tiny_checkpoints: dict[str, Path], adapters: dict[str, Path]
) -> None:
    """Mixed adapters and no adapter in one replayed step (BGMV reads each token's slot
    from the static buffer); then an adapter of a larger rank grows the stacks, so the
    LoRA recordings are dropped and made again; a DoRA adapter's steps run eagerly; an
    adapter's own LM head serves its rows after the replay. (The
    eager engine takes the torch backend: the interpreter runs Triton kernels slowly.)"""
    folder = tiny_checkpoints["llama"]
    eager = _engine(folder, lora_backend="torch", max_num_seqs=4)
    replayed = _engine(folder, lora_backend="triton", max_num_seqs=4)
    capture = RerunCapture()
    graphs = replayed.runner.enable_decode_graphs(capture)
    first = {"a": adapters["a"], "b": adapters["b"]}
    batches: list[list[str | None]] = [["a", None, "b"], [None, None]]
    want = _lora_run(eager, first, batches)
    got = _lora_run(replayed, first, batches)
    keys = set(graphs.graph_keys())
    assert {(4, True), (2, False)} <= keys
    assert graphs.stats.dropped == 0
    later = {name: adapters[name] for name in ("wide", "dora", "head")}
    batches2: list[list[str | None]] = [["wide", "a"], ["dora", None], ["head", "a"]]
    want += _lora_run(eager, later, batches2)
    eager_before = graphs.stats.eager_decode
    got += _lora_run(replayed, later, batches2)
    assert graphs.stats.dropped >= 1  # the o_proj stack grew to rank 32
    assert graphs.stats.captured[(2, True)] == 2
    assert graphs.stats.eager_decode > eager_before  # the DoRA request's steps
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w, folder, 20)


def test_lora_steps_of_the_torch_backend_run_eagerly(
    tiny_checkpoints: dict[str, Path], adapters: dict[str, Path]
) -> None:
    folder = tiny_checkpoints["llama"]
    eager, replayed = _engine(folder, lora_backend="torch"), _engine(folder, lora_backend="torch")
    graphs = replayed.runner.enable_decode_graphs(RecordedCapture())
    batches: list[list[str | None]] = [["a", None], [None, None, None]]
    want = _lora_run(eager, {"a": adapters["a"]}, batches)
    got = _lora_run(replayed, {"a": adapters["a"]}, batches)
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w, folder, 12)
    assert graphs.stats.eager_decode > 0
    assert all(not with_lora for _, with_lora in graphs.graph_keys())
    assert graphs.stats.replayed > 0


def test_the_recording_double_freezes_host_decisions_and_refuses_host_reads() -> None:
    """What makes RecordedCapture a faithful stand-in: values read on the host while
    recording stay as recorded, buffers read by torch ops do not."""
    buffer = torch.zeros(3)
    host = [1.0]

    def forward() -> torch.Tensor:
        return buffer * 2 + torch.tensor(host)

    replay = RecordedCapture().capture(forward)
    buffer.copy_(torch.tensor([1.0, 2.0, 3.0]))
    host[0] = 100.0
    assert replay().tolist() == [3.0, 5.0, 7.0]

    def syncing() -> torch.Tensor:
        return buffer * buffer.sum().item()

    with pytest.raises(AssertionError, match="reads a tensor's value on the host"):
        RecordedCapture().capture(syncing)
