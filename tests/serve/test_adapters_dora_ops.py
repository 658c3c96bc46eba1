"""DoRA in one projection, on every LoRA backend, against PEFT's formula in float64.

A fused q|k|v-like projection with a bias; in one step, tokens of a DoRA adapter on two of
its slices, of a plain LoRA, of a DoRA adapter on the middle slice, and without adapter.
Each token's output must be PEFT's (``peft/tuners/lora/dora.py``, eval mode)::

    b + m / ||W + s B A||_row * (x W^T + s x A^T B^T)     on a DoRA slice
    x W^T + b + s x A^T B^T                                 on a plain LoRA slice
    x W^T + b                                               elsewhere
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tests.numerics import assert_within, gamma  # noqa: E402

from openledger.serve.layers.linear import Linear  # noqa: E402
from openledger.serve.layers.lora import LoraProjection, LoraState  # noqa: E402
from openledger.serve.ops.lora_cpu import cpu_lora_kernel  # noqa: E402
from openledger.serve.ops.lora_dora import DoraFactors, dora_update  # noqa: E402
from openledger.serve.ops.lora_torch import LoraSlice, LoraWeights  # noqa: E402

HIDDEN = 32
SIZES = [32, 16, 16]
OFFSETS = [0, 32, 48, 64]
Adapter = dict[int, tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]]
"""slice -> (A [r, H], B [cols, r], scaling, magnitude or None)"""


def random_adapter(gen: torch.Generator, slices: dict[int, int], dora: bool) -> Adapter:
    adapter: Adapter = {}
    for index, rank in slices.items():
        cols = SIZES[index]
        a = torch.randn(rank, HIDDEN, generator=gen) / HIDDEN**0.5
        b = torch.randn(cols, rank, generator=gen) * 0.3
        magnitude = torch.rand(cols, generator=gen) * 2 + 0.5 if dora else None
        adapter[index] = (a, b, 2.0 / rank, magnitude)
    return adapter


def served_weights(adapter: Adapter, weight: torch.Tensor, bias: torch.Tensor) -> LoraWeights:
    """The adapter laid out as the loader lays it out: ``g s B`` per DoRA slice, and the
    factors over the fused width (1 and 0 off the DoRA slices)."""
    a_parts, slices, rank_at = [], [], 0
    scale = torch.ones(OFFSETS[-1])
    has_dora = False
    for index, (a, b, scaling, magnitude) in sorted(adapter.items()):
        start, end = OFFSETS[index], OFFSETS[index + 1]
        b = b * scaling
        if magnitude is not None:
            g, b = dora_update(weight[start:end], a, b, magnitude)
            scale[start:end] = g
            has_dora = True
        a_parts.append(a)
        slices.append(LoraSlice(rank_at, rank_at + a.shape[0], start, end, b))
        rank_at += a.shape[0]
    factors = DoraFactors(scale, (1 - scale) * bias) if has_dora else None
    return LoraWeights(torch.cat(a_parts), tuple(slices), factors)


def peft_output(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, adapter: Adapter | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's output of one adapter (or none) in float64, and the same sums over absolute
    values (what the rounding of each element is proportional to)."""
    x, weight, bias = x.double(), weight.double(), bias.double()
    out = x @ weight.T + bias
    size = x.abs() @ weight.abs().T + bias.abs()
    for index, (a, b, scaling, magnitude) in (adapter or {}).items():
        a, b = a.double(), b.double()
        cols = slice(OFFSETS[index], OFFSETS[index + 1])
        lora = scaling * (x @ a.T) @ b.T
        lora_size = scaling * (x.abs() @ a.abs().T) @ b.abs().T
        if magnitude is None:
            out[:, cols] += lora
            size[:, cols] += lora_size
            continue
        norm = torch.linalg.norm(weight[cols] + scaling * b @ a, dim=1)
        g = magnitude.double() / norm
        out[:, cols] = bias[cols] + g * (x @ weight[cols].T + lora)
        size[:, cols] = (1 + g) * bias[cols].abs() + g * (size[:, cols] + lora_size)
    return out, size


def backends() -> list[str]:
    names = ["torch", "triton"]
    if cpu_lora_kernel() is not None:
        names.append("cpu")
    return names


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize(
    "sequences",
    [
        [(0, 3), (-1, 2), (1, 1), (2, 4), (0, 1)],  # prefill: DoRA slots twice, rows apart
        [(0, 1), (1, 1), (2, 1), (-1, 1), (2, 1)],  # decode
        [(2, 5)],  # one DoRA slot over one run of tokens
        [(0, 1), (0, 1), (2, 1), (2, 1)],  # every token of a DoRA slot, in order
    ],
    ids=["prefill", "decode", "one-run", "all-dora"],
)
def test_dora_step_matches_peft(backend: str, sequences: list[tuple[int, int]]) -> None:
    if backend == "triton":
        pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(5)
    linear = Linear(HIDDEN, SIZES, bias=True)
    linear.weight.data.copy_(torch.randn(OFFSETS[-1], HIDDEN, generator=gen) / HIDDEN**0.5)
    assert linear.bias is not None
    linear.bias.data.copy_(torch.randn(OFFSETS[-1], generator=gen))
    weight, bias = linear.weight.data, linear.bias.data
    adapters = [
        random_adapter(gen, {0: 4, 2: 2}, dora=True),
        random_adapter(gen, {0: 3, 1: 5}, dora=False),
        random_adapter(gen, {1: 6}, dora=True),
    ]
    state = LoraState({"proj": (HIDDEN, OFFSETS[-1])}, 4, backend=backend)
    assert state.backend_name == backend
    linear.lora = LoraProjection(state, "proj")
    for slot, adapter in enumerate(adapters):
        state.install(slot, {"proj": served_weights(adapter, weight, bias)})
    slots = [slot for slot, _ in sequences]
    lengths = [length for _, length in sequences]
    x = torch.randn(sum(lengths), HIDDEN, generator=gen)
    for _ in range(3):  # NOTE: the third step is steady (the torch backend's batched path)
        state.set_batch(slots, lengths)
        with torch.inference_mode():
            got = linear(x)
        parts = [
            peft_output(part, weight, bias, None if slot < 0 else adapters[slot])
            for (slot, _), part in zip(sequences, x.split(lengths), strict=True)
        ]
        want, size = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        # NOTE: a chain of g's norm (H squares summed, a root, a division), the matmuls
        # (H + r terms), g s B (one rounding) and the rescale (a product and a sum)
        terms = (HIDDEN + 2) + (HIDDEN + max(SIZES)) + 1 + 2
        assert_within(got, want, gamma(terms, torch.float32) * size, msg=f"{backend}: ")
    untouched = [i for i, slot in enumerate(t for s, n in sequences for t in [s] * n) if slot < 0]
    state.set_batch([-1] * len(lengths), lengths)
    with torch.inference_mode():
        base = linear(x)
    assert torch.equal(got[untouched], base[untouched])  # no adapter: bit for bit the base
    assert not torch.allclose(got, base)  # the adapters do change the tokens they serve


def test_dora_slot_emptied_leaves_tokens_alone() -> None:
    gen = torch.Generator().manual_seed(9)
    linear = Linear(HIDDEN, SIZES, bias=True)
    linear.weight.data.copy_(torch.randn(OFFSETS[-1], HIDDEN, generator=gen))
    state = LoraState({"proj": (HIDDEN, OFFSETS[-1])}, 2, backend="torch")
    linear.lora = LoraProjection(state, "proj")
    adapter = random_adapter(gen, {0: 2}, dora=True)
    assert linear.bias is not None
    state.install(0, {"proj": served_weights(adapter, linear.weight.data, linear.bias.data)})
    plain = random_adapter(gen, {1: 2}, dora=False)
    state.install(0, {"proj": served_weights(plain, linear.weight.data, linear.bias.data)})
    x = torch.randn(3, HIDDEN, generator=gen)
    state.set_batch([0], [3])
    with torch.inference_mode():
        got = linear(x)
    want, size = peft_output(x, linear.weight.data, linear.bias.data, plain)
    assert_within(got, want, gamma(HIDDEN + 4, torch.float32) * size)
