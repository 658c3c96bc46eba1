"""LoRA projections: the CPU kernel and the batched and per-adapter torch paths against the
einsum reference, the per-step metadata, and the backend switch."""

from __future__ import annotations

from typing import NamedTuple

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tests.numerics import assert_within, gamma  # noqa: E402
from tests.serve.test_serve_lora_ops import (  # noqa: E402
    delta_bound,
    max_rank_of,
    random_weights,
    reference_delta,
)

from openledger.exceptions import ConfigError  # noqa: E402
from openledger.serve.layers.lora import (  # noqa: E402
    LoraProjection,
    LoraState,
    resolve_lora_backend,
)
from openledger.serve.ops.lora_backends import TorchLoraBackend  # noqa: E402
from openledger.serve.ops.lora_batched import (  # noqa: E402
    BatchedPlan,
    add_lora_batched,
    stack_group_weights,
)
from openledger.serve.ops.lora_cpu import cpu_lora_kernel  # noqa: E402
from openledger.serve.ops.lora_step import LoraStep  # noqa: E402
from openledger.serve.ops.lora_torch import LoraWeights, fuse_expand  # noqa: E402

HIDDEN = 24
SIZES = [24, 8, 8]  # a q|k|v-like fused projection
CPU = torch.device("cpu")


def make_slots(seed: int, num_slots: int) -> list[LoraWeights | None]:
    gen = torch.Generator().manual_seed(seed)
    slots: list[LoraWeights | None] = []
    for slot in range(num_slots):
        ranks = [1 + (slot * 5 + i) % 7 if (slot + i) % 3 else None for i in range(3)]
        ranks[0] = ranks[0] or 4
        slots.append(random_weights(gen, HIDDEN, SIZES, ranks))
    slots[num_slots // 2] = None  # a slot whose adapter does not target this projection
    return slots


def token_indices(slots: list[int], lengths: list[int]) -> torch.Tensor:
    values = [s for s, n in zip(slots, lengths, strict=True) for _ in range(n)]
    return torch.tensor(values, dtype=torch.int64)


def kernel_or_torch(kernel: bool) -> str:
    """The CPU kernel's backend where asked for and built, else torch's."""
    return "cpu" if kernel and cpu_lora_kernel() is not None else "torch"


def layer_output(
    state: LoraState,
    weights: list[LoraWeights | None],
    seq_slots: list[int],
    lengths: list[int],
) -> LayerRun:
    """One projection on random inputs, checked against the reference within the float32
    rounding bound of the update (:func:`lora_limit`).

    The step runs three times: under the torch backend the first two with these adapters
    take the per-adapter path, the third (a steady step) the batched one; under the CPU
    backend every step within its row limit takes the kernel; all must agree.
    """
    for slot, w in enumerate(weights):
        state.install(slot, None if w is None else {"proj": fuse_expand(w)})
    tokens = sum(lengths)
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, HIDDEN, generator=gen)
    base = torch.randn(tokens, sum(SIZES), generator=gen)
    projection = LoraProjection(state, "proj")
    outputs = []
    for _ in range(3):
        state.set_batch(seq_slots, lengths)
        out = base.clone()
        projection.apply(out, x)
        outputs.append(out)
    indices = token_indices(seq_slots, lengths)
    live = torch.tensor(
        [i >= 0 and weights[i] is not None for i in indices.tolist()], dtype=torch.bool
    )
    masked = torch.where(live, indices, torch.full_like(indices, -1))
    want = base + reference_delta(x, weights, masked, sum(SIZES))
    limit = lora_limit(x, weights, masked, base)
    for out in outputs:
        assert_within(out, want, limit)
    return LayerRun(outputs[2], want, limit)


class LayerRun(NamedTuple):
    """A projection's output, its reference, and how far rounding may set them apart."""

    out: torch.Tensor
    want: torch.Tensor
    limit: torch.Tensor


def lora_limit(
    x: torch.Tensor,
    weights: list[LoraWeights | None],
    indices: torch.Tensor,
    base: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Twice ``gamma(hidden + rank + 1)`` of the update's magnitudes: a float32 path against
    the float32 reference, whatever order either sums in."""
    terms = x.shape[1] + max_rank_of(weights) + 1
    size = delta_bound(x, weights, indices, sum(SIZES), base)
    return 2 * gamma(terms, torch.float32) * size


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-1, 4), st.integers(0, 6)), min_size=1, max_size=9),
    sort=st.booleans(),
    kernel=st.booleans(),
)
def test_projection_matches_reference_for_any_step(
    data: list[tuple[int, int]], sort: bool, kernel: bool
) -> None:
    if sort:  # the engine sorts sequences by slot; unsorted steps must work too
        data = sorted(data)
    seq_slots, lengths = [s for s, _ in data], [n for _, n in data]
    weights = make_slots(3, 5)
    state = LoraState({"proj": (HIDDEN, sum(SIZES))}, 5, CPU, backend=kernel_or_torch(kernel))
    layer_output(state, weights, seq_slots, lengths)


def test_steps_pick_the_batched_layout_they_allow() -> None:
    decode = LoraStep.from_sequences([0, 0, 1, 1, 3, 3], [1] * 6, CPU)
    assert decode.is_decode
    assert decode.active == (0, 1, 3)
    assert decode.plan is not None
    assert decode.plan.block == (0, 6)
    with_base = LoraStep.from_sequences([-1, 2, 2, 5, 5], [1] * 5, CPU)
    assert with_base.plan is not None
    assert with_base.plan.block == (1, 5)
    ragged = LoraStep.from_sequences([1, 2, 1], [3, 2, 1], CPU)
    assert ragged.plan is not None
    assert ragged.plan.block is None
    assert ragged.plan.gather is not None
    assert ragged.plan.gather.tolist() == [0, 1, 2, 5, 3, 4, 0, 0]
    assert ragged.plan.pad_mask is not None
    assert ragged.plan.pad_mask.flatten().tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    lopsided = LoraStep.from_sequences([0, 1, 2], [40, 1, 1], CPU)
    assert lopsided.plan is None  # padding would triple the rows: per-adapter path
    assert not lopsided.is_decode
    assert LoraStep.from_sequences([-1, -1], [2, 1], CPU).empty
    with pytest.raises(ValueError, match="2 slots for 1 sequences"):
        LoraStep.from_sequences([0, 1], [1], CPU)


def test_batched_stacks_pad_ranks_and_skip_untargeted_groups() -> None:
    weights = make_slots(8, 3)
    stacked = stack_group_weights(weights, HIDDEN, sum(SIZES))
    assert stacked is not None
    rank = max(w.a.shape[0] for w in weights if w is not None)
    assert stacked.a_t.shape == (3, HIDDEN, rank)
    assert not stacked.a_t[1].any()
    assert not stacked.b_t[1].any()
    assert stack_group_weights([None, None], HIDDEN, 40) is None
    plan = BatchedPlan.from_runs([[(0, 2)], [(2, 4)], [(4, 6)]], CPU)
    x = torch.randn(6, HIDDEN)
    out = torch.zeros(6, sum(SIZES))
    add_lora_batched(out, x, plan, stacked)
    indices = torch.tensor([0, 0, -1, -1, 2, 2])  # group 1 holds no weights here
    want = reference_delta(x, weights, indices, sum(SIZES))
    assert_within(out, want, lora_limit(x, weights, indices))


def test_batched_path_runs_on_steady_steps_only() -> None:
    state = LoraState(["proj"], 4, CPU, backend="torch")
    backend = state.backend
    assert isinstance(backend, TorchLoraBackend)
    for slot, w in enumerate(make_slots(6, 4)):
        state.install(slot, None if w is None else {"proj": fuse_expand(w)})
    projection = LoraProjection(state, "proj")
    x, out = torch.randn(4, HIDDEN), torch.zeros(4, sum(SIZES))
    used = []
    steps = [[0, 1, 3, 3]] * 4 + [[0, 3, 3, 3]] * 3 + [[0, 1, 3, 3], [0, 3, 3, 3]]
    for step_slots in steps:
        state.set_batch(step_slots, [1] * 4)
        projection.apply(out, x)
        used.append((state.steady_steps, backend.stacked("proj")))
    assert used == [
        (0, False), (1, False), (2, True), (3, True),  # stacked from the third step on
        (0, False), (1, False), (2, True),  # a new set: stale stacks freed, then rebuilt
        (0, False), (0, False),  # adapters changing every step: never stacked
    ]  # fmt: skip
    per_adapter = LoraState(["proj"], 4, CPU, backend="torch", batched=False)
    for slot, w in enumerate(make_slots(6, 4)):
        per_adapter.install(slot, None if w is None else {"proj": fuse_expand(w)})
    for _ in range(3):
        per_adapter.set_batch([0, 3], [1, 1])
        LoraProjection(per_adapter, "proj").apply(out[:2], x[:2])
    assert isinstance(per_adapter.backend, TorchLoraBackend)
    assert not per_adapter.backend.stacked("proj")  # EngineConfig(lora_batched_decode=False)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
def test_stacks_are_rebuilt_when_a_slot_changes(kernel: bool) -> None:
    weights = make_slots(1, 3)
    state = LoraState(["proj"], 3, CPU, backend=kernel_or_torch(kernel))
    first = layer_output(state, weights, [0, 2], [1, 1])
    weights[2] = make_slots(2, 3)[0]  # a new adapter in slot 2, same step layout
    second = layer_output(state, weights, [0, 2], [1, 1])
    assert not torch.allclose(first.out, second.out)


def test_backend_switch() -> None:
    built = cpu_lora_kernel() is not None
    assert resolve_lora_backend("auto", CPU) == ("cpu" if built else "torch")
    assert resolve_lora_backend("auto", CPU, cpu_kernel=False) == "torch"
    assert resolve_lora_backend("torch", torch.device("cuda")) == "torch"
    with pytest.raises(ConfigError, match="lora_backend='cpu' needs the compiled CPU kernel"):
        resolve_lora_backend("cpu", torch.device("cuda"))
    with pytest.raises(ConfigError, match="lora_backend='cpu'"):
        resolve_lora_backend("cpu", CPU, cpu_kernel=False)
    with pytest.raises(ConfigError, match="unknown LoRA backend 'cutlass'"):
        resolve_lora_backend("cutlass", CPU)
    with pytest.raises(ConfigError, match="unknown LoRA backend"):
        LoraState(["proj"], 2, CPU, backend="fast")


def test_path_switches_come_from_the_config_and_the_environment_overrides_them() -> None:
    from openledger.serve import EngineConfig

    config = EngineConfig()
    assert config.with_environment({}) is config
    found = config.with_environment(
        {
            "OPENLEDGER_LORA_BACKEND": "torch",
            "OPENLEDGER_CPU_KERNELS": "0",
            "OPENLEDGER_ONEDNN": "0",
        }
    )
    assert (found.lora_backend, found.cpu_kernels, found.weight_packing) == ("torch", False, False)
    assert config.with_environment({"OPENLEDGER_CPU_KERNELS": "1"}).cpu_kernels
    with pytest.raises(ConfigError, match="lora_backend"):
        config.with_environment({"OPENLEDGER_LORA_BACKEND": "cutlass"})
