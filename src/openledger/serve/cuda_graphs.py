"""CUDA graphs of decode steps: captured once per batch size, replayed with new inputs.

A decode step (every sequence computes one token) launches the same kernels step after
step; only their inputs change. On a GPU the launches, not the arithmetic, bound such a
step when the batch is small or the host is slow, so :class:`DecodeGraphs` records the
model's forward pass of a decode step once per *batch-size bucket*
(:data:`GRAPH_BATCH_SIZES`: 1, 2, 4, 8, then every multiple of 8 up to 512) and replays
the recording (``torch.cuda.CUDAGraph``) with the step's inputs copied into the buffers
it was recorded on::

    static inputs of a bucket (device)     what the step writes into them
    ids, positions, KV slots    [size]     the step's, then padding rows
    adapter slot of each token  [size]     (-1: no adapter; the Triton BGMV kernels read it)
    context lengths             [size]     padding rows: 1
    block tables         [size, width]     the step's widest table's columns only

A step of ``n`` sequences runs in the smallest bucket ``size >= n``; the ``size - n``
padding rows compute token 0 at position 0, write its key and value into the *scratch
block* (one KV block past those the block pool hands out) and attend to it alone, and
their hidden states are dropped. ``width`` is the longest sequence's block count, so a
table never outgrows its buffer. Logits and sampling run after the replay, eagerly (per
request LM heads of adapters with ``modules_to_save`` included).

What is fixed when a graph is recorded, and so decides which graph a step may replay:

* the batch size (the bucket);
* whether the step has adapters: a bucket has one graph without LoRA and, with the
  Triton LoRA backend, one with it, whose BGMV kernels read each token's slot from the
  static buffer and the adapters' weights from the backend's per-slot stacks. Those
  stacks are recorded by address: when one is created or grown (an adapter targeting a
  new projection, or of a larger rank), the LoRA graphs are dropped and recorded again.
  Steps with adapters run eagerly under the other LoRA backends (their grouping of tokens
  by adapter is host work of each step), and so do steps with a DoRA adapter or an
  adapter with its own ``embed_tokens``;
* the attention's plan: decode rows only, each layer's window. With the Triton paged
  decode kernel the plan is the block tables and context lengths; layers without a paged
  kernel (``attention_backend="reference"``, logit soft-capping) gather keys over the full
  table width and mask them, computed in the graph from the same buffers.

Prefill and mixed steps, steps of more sequences than the largest bucket, and the cases
above run eagerly. Graphs are recorded lazily, the first time a bucket (and LoRA state)
is met: after warm-up runs on a side stream, into one memory pool shared by all buckets.
``EngineConfig.cuda_graphs="auto"`` turns them on for CUDA devices when every attention
layer decodes through the paged kernel, the model is not split over several processes
(``tensor_parallel_size > 1``) and its rotary embedding is not LongRoPE (whose table
offsets are host work of each step); :func:`resolve_cuda_graphs` says why not otherwise.

How a recording is made is a :class:`GraphCapture`: :class:`CudaGraphCapture` on a GPU;
the tests replace it by doubles that replay on CPU tensors (recorded torch ops, or the
captured function run again on the static buffers), so that the bucketing, padding,
buffer copies and LoRA state checks are tested without a GPU.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from openledger.exceptions import ConfigError
from openledger.serve.batch import BatchMetadata
from openledger.serve.layers.attention import PagedAttention
from openledger.serve.layers.lora import LoraState
from openledger.serve.layers.rotary import RotaryEmbedding
from openledger.serve.ops.attention_plan import AttentionPlan, DecodeGroup
from openledger.serve.ops.lora_batched import BatchedPlan
from openledger.serve.ops.lora_step import LoraStep
from openledger.serve.sequence import SequenceState

__all__ = [
    "GRAPH_BATCH_SIZES",
    "CudaGraphCapture",
    "DecodeGraphs",
    "GraphCapture",
    "GraphStats",
    "graph_batch_size",
    "resolve_cuda_graphs",
]

GRAPH_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, *range(8, 513, 8))
"""Batch sizes a decode step is padded up to (vLLM's buckets); larger steps run eagerly."""

Replay = Callable[[], torch.Tensor]


def graph_batch_size(num_seqs: int, sizes: Sequence[int] = GRAPH_BATCH_SIZES) -> int | None:
    """The bucket a decode step of ``num_seqs`` sequences runs in: the smallest of
    ``sizes`` (ascending) that holds it, None when none does (the step runs eagerly).

    Raises:
        ValueError: ``num_seqs`` is not positive.
    """
    if num_seqs < 1:
        raise ValueError(f"a decode step has at least one sequence, got {num_seqs}")
    index = bisect.bisect_left(sizes, num_seqs)
    return sizes[index] if index < len(sizes) else None


def resolve_cuda_graphs(
    setting: bool | Literal["auto"], device: torch.device, model: nn.Module
) -> tuple[bool, str]:
    """Whether decode steps of ``model`` on ``device`` are captured
    (``EngineConfig.cuda_graphs``), and why not when they are not.

    Returns:
        ``(on, reason)``; ``reason`` is empty when on.

    Raises:
        ConfigError: ``True`` where graphs cannot run: no CUDA device, a model split over
            several processes, or LongRoPE rotary embeddings (the message says which).
    """
    if setting not in (True, False, "auto"):
        raise ConfigError(f"cuda_graphs must be True, False or 'auto', got {setting!r}")
    if setting is False:
        return False, "cuda_graphs=False"
    blocker = _blocker(device, model)
    if blocker:
        if setting is True:
            raise ConfigError(f"cuda_graphs=True cannot be served: {blocker}")
        return False, blocker
    unpaged = [a for a in _attention_layers(model) if not _paged(a)]
    if unpaged and setting == "auto":
        return False, (
            f"{len(unpaged)} attention layers decode without the paged Triton kernel "
            "(attention_backend='reference' or logit soft-capping); cuda_graphs=True "
            "captures them anyway, gathering keys over the whole table width"
        )
    return True, ""


def _blocker(device: torch.device, model: nn.Module) -> str:
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; this engine runs on {device}"
    size = int(getattr(model, "tp_size", 1))
    if size > 1:
        return f"the model is split over tensor_parallel_size={size} processes"
    for module in model.modules():
        if isinstance(module, RotaryEmbedding) and module.rope.rope_type == "longrope":
            return "LongRoPE rotary embeddings pick their table rows on the host each step"
    return ""


def _attention_layers(model: nn.Module) -> list[PagedAttention]:
    return [m for m in model.modules() if isinstance(m, PagedAttention)]


def _paged(layer: PagedAttention) -> bool:
    return layer.backend == "triton" and layer.softcap is None


class GraphCapture(Protocol):
    """Records a step's forward pass once and replays it.

    ``forward`` reads its inputs from static buffers and must compute the same thing on
    every call; :meth:`capture` may call it (warm-up runs) before recording it.
    """

    def capture(self, forward: Replay) -> Replay:
        """Record ``forward``; the result replays the recording and returns its output
        tensor (the same tensor on every replay, overwritten by the next one)."""
        ...


class CudaGraphCapture:
    """:class:`GraphCapture` with ``torch.cuda.CUDAGraph``: warm-up runs on a side stream
    (Triton compiles its kernels, cuBLAS picks its workspaces), then the recording, every
    bucket's in one memory pool (only one graph runs at a time, and each step's output is
    read before the next replay).

    Args:
        device: The CUDA device.
        warmups: Eager runs before each recording.
    """

    def __init__(self, device: torch.device, *, warmups: int = 2) -> None:
        self.device = device
        self.warmups = warmups
        self.pool: Any = None  # NOTE: torch.cuda.graph_pool_handle()
        self._stream: torch.cuda.Stream | None = None

    def capture(self, forward: Replay) -> Replay:
        """Warm up on a side stream, record on it, and return the replay."""
        current = torch.cuda.current_stream(self.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        stream = self._stream
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(self.warmups):
                forward()
        current.wait_stream(stream)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # NOTE: thread_local: another thread of the process (an async engine's caller,
        # an adapter load) may use the device while this one records.
        with torch.cuda.graph(
            graph, pool=self.pool, stream=stream, capture_error_mode="thread_local"
        ):
            output = forward()

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay


@dataclass(slots=True)
class GraphStats:
    """What the decode graphs did (counts since the engine started).

    Attributes:
        replayed: Steps replayed from a graph.
        eager_decode: Decode steps run eagerly (too many sequences, or a LoRA state no
            graph serves).
        captured: Recordings made, by ``(size, with adapters)``.
        dropped: LoRA recordings dropped because the adapters' stacks moved.
    """

    replayed: int = 0
    eager_decode: int = 0
    captured: dict[tuple[int, bool], int] = field(default_factory=dict)
    dropped: int = 0


class _StaticInputs:
    """A bucket's static input buffers (see the module docstring) and their padding."""

    def __init__(
        self, size: int, width: int, scratch_block: int, block_size: int, device: torch.device
    ) -> None:
        self.size, self.width = size, width
        self.scratch_block, self.block_size = scratch_block, block_size
        self.device = device
        # rows: token ids, positions, KV slots, adapter slots
        self.longs = torch.zeros(4, size, dtype=torch.int64, device=device)
        self.lens = torch.ones(size, dtype=torch.int32, device=device)
        self.tables = torch.full((size, width), scratch_block, dtype=torch.int32, device=device)
        self.rows = torch.arange(size, device=device)
        self.pad()

    def pad(self) -> None:
        """Every row a padding row (what recordings are made on: only the scratch block
        is written)."""
        self.longs[0:2].zero_()
        self.longs[2].fill_(self.scratch_block * self.block_size)
        self.longs[3].fill_(-1)
        self.lens.fill_(1)
        self.tables.fill_(self.scratch_block)

    def fill(self, seqs: Sequence[SequenceState], adapters: Sequence[int]) -> None:
        """Copy a decode step's inputs in (one host tensor per dtype), padding rows after."""
        n, size, block_size = len(seqs), self.size, self.block_size
        pad = size - n
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        lens: list[int] = []
        for seq in seqs:
            position = seq.num_computed_tokens - 1
            ids.append(seq.token_ids[position])
            positions.append(position)
            slots.append(
                seq.block_table[position // block_size] * block_size + position % block_size
            )
            lens.append(position + 1)
        width = max(len(seq.block_table) for seq in seqs)
        scratch = self.scratch_block
        tables = [
            b for seq in seqs for b in seq.block_table + [scratch] * (width - len(seq.block_table))
        ]
        longs = (
            ids + [0] * pad
            + positions + [0] * pad
            + slots + [scratch * block_size] * pad
            + list(adapters) + [-1] * pad
        )  # fmt: skip
        ints = lens + [1] * pad + tables + [scratch] * (pad * width)
        pinned = self.device.type == "cuda"
        host_longs = torch.tensor(longs, dtype=torch.int64, pin_memory=pinned)
        host_ints = torch.tensor(ints, dtype=torch.int32, pin_memory=pinned)
        self.longs.copy_(host_longs.view(4, size), non_blocking=True)
        self.lens.copy_(host_ints[:size], non_blocking=True)
        self.tables[:, :width].copy_(host_ints[size:].view(size, width), non_blocking=True)


class _GraphLoraStep(LoraStep):
    """The LoRA step a graph with adapters is recorded with: decode, each token's slot read
    from the static buffer (BGMV), never the batched matmul's host-built plan.

    ``anchor`` is a slot of the step the recording is made for (no DoRA, no own
    embeddings): the step must not be empty, and the DoRA and embedding checks of the
    layers see that slot.
    """

    def __init__(self, token_slots: torch.Tensor, anchor: int, device: torch.device) -> None:
        size = int(token_slots.shape[0])
        super().__init__([(anchor, 0, 1)], size, True, device)
        self._token_slots = token_slots

    @property
    def token_slots(self) -> torch.Tensor:
        """The static buffer."""
        return self._token_slots

    @property
    def plan(self) -> BatchedPlan | None:
        """None: the Triton backend then runs BGMV over :attr:`token_slots`."""
        return None


class DecodeGraphs:
    """Records and replays decode steps of one model (see the module docstring).

    Args:
        model: The engine's model, its KV caches bound (with the scratch block).
        capture: How recordings are made (:class:`CudaGraphCapture` on a GPU).
        block_size: Token slots per KV block.
        scratch_block: The KV block padding rows write to (never handed to a sequence).
        table_width: Most blocks of one sequence (the static tables' width).
        sliding_window: The window of the step plans the runner builds
            (``ModelConfig.sliding_window``).
        device: Where the model runs.
        sizes: The buckets, ascending.

    Raises:
        ValueError: ``sizes`` empty, not ascending, or not positive.
    """

    def __init__(
        self,
        model: nn.Module,
        capture: GraphCapture,
        *,
        block_size: int,
        scratch_block: int,
        table_width: int,
        sliding_window: int | None,
        device: torch.device,
        sizes: Sequence[int] = GRAPH_BATCH_SIZES,
    ) -> None:
        if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(f"graph batch sizes must be positive and ascending: {sizes}")
        self.model = model
        self.capture = capture
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.table_width = table_width
        self.sliding_window = sliding_window
        self.device = device
        self.sizes = tuple(sizes)
        layers = _attention_layers(model)
        self.windows = {sliding_window} | {a.sliding_window for a in layers}
        self.gathers = any(not _paged(a) for a in layers)
        self.stats = GraphStats()
        self._inputs: dict[int, _StaticInputs] = {}
        self._graphs: dict[tuple[int, bool], Replay] = {}
        self._stacks: tuple[int, tuple[object, ...]] | None = None

    def run(
        self, seqs: Sequence[SequenceState], num_new_tokens: Sequence[int], lora: LoraState | None
    ) -> torch.Tensor | None:
        """Replay the step if a graph serves it (recording it first if needed).

        Args:
            seqs: The step's sequences, ``num_computed_tokens`` already advanced.
            num_new_tokens: Tokens each computes in this step.
            lora: The model's adapter state, None without adapters.

        Returns:
            The final hidden states ``[len(seqs), hidden]`` (rows of the last replay's
            output, valid until the next replay), or None: run the step eagerly.
        """
        if any(n != 1 for n in num_new_tokens):
            return None
        size = graph_batch_size(len(seqs), self.sizes)
        adapters = [seq.adapter_index for seq in seqs]
        with_lora = lora is not None and any(slot >= 0 for slot in adapters)
        anchor = self._anchor(adapters, lora) if with_lora else -1
        too_wide = max(len(seq.block_table) for seq in seqs) > self.table_width
        if size is None or too_wide or (with_lora and anchor < 0):
            self.stats.eager_decode += 1
            return None
        if with_lora:
            assert lora is not None  # NOTE: with_lora says so
            self._check_stacks(lora)
        key = (size, with_lora)
        inputs = self._inputs.get(size)
        if inputs is None:
            inputs = self._inputs[size] = _StaticInputs(
                size, self.table_width, self.scratch_block, self.block_size, self.device
            )
        replay = self._graphs.get(key)
        if replay is None:
            inputs.pad()
            replay = self.capture.capture(self._forward(inputs, lora, anchor))
            self._graphs[key] = replay
            self.stats.captured[key] = self.stats.captured.get(key, 0) + 1
        inputs.fill(seqs, adapters if with_lora else [-1] * len(seqs))
        hidden = replay()
        self.stats.replayed += 1
        return hidden[: len(seqs)]

    def _anchor(self, adapters: Sequence[int], lora: LoraState | None) -> int:
        """A slot of the step a LoRA graph can be recorded with, or -1 when the step's
        adapters need the eager path (see the module docstring)."""
        if lora is None or lora.backend_name != "triton":
            return -1
        active = {slot for slot in adapters if slot >= 0}
        for slot in active:
            if lora.heads[slot].get("embed_tokens") is not None:
                return -1
            if any(present[slot] for present in lora.dora.present.values()):
                return -1
        return min(active)

    def _check_stacks(self, lora: LoraState) -> None:
        """Drop the LoRA graphs when the backend's stacks are not those they read."""
        if self._stacks is not None and self._stacks[0] == lora.version:
            return
        stacks = getattr(lora.backend, "stacks", {})
        found = tuple(
            (name, s.a.data_ptr(), s.b.data_ptr(), s.ranks.data_ptr(), tuple(s.a.shape))
            for name, s in sorted(stacks.items())
        )
        if self._stacks is not None and self._stacks[1] != found:
            stale = [key for key in self._graphs if key[1]]
            for key in stale:
                del self._graphs[key]
            self.stats.dropped += len(stale)
        self._stacks = (lora.version, found)

    def _forward(self, inputs: _StaticInputs, lora: LoraState | None, anchor: int) -> Replay:
        """The step's forward pass over ``inputs``. Every call builds new views and a new
        plan, so that caches keyed by a step's tensors (the rotary table's rows, the
        masks) are computed inside the recording, not taken from a warm-up run."""
        size, width, model, device = inputs.size, inputs.width, self.model, self.device

        def forward() -> torch.Tensor:
            ids, positions, slots, token_slots = inputs.longs.view(4, size).unbind(0)
            lens = inputs.lens.view(size)
            tables = inputs.tables.view(size, width)
            if lora is not None:
                if anchor >= 0:
                    lora.set_step(_GraphLoraStep(token_slots, anchor, device))
                else:
                    lora.set_step(LoraStep([], size, True, device))
            batch = BatchMetadata(
                is_prefill=False,
                positions=positions,
                slot_mapping=slots,
                block_tables=tables,
                context_lens=lens,
                logits_indices=inputs.rows.view(size),
                host_query_lens=[1] * size,
                host_context_lens=[1] * size,  # NOTE: host lists are not read in a graph
                host_long_context=[False] * size,  # (LongRoPE models run no graphs)
                attention=self._plan(tables, lens),
            )
            hidden: torch.Tensor = model(ids, batch)
            return hidden

        return forward

    def _plan(self, tables: torch.Tensor, lens: torch.Tensor) -> AttentionPlan:
        """The decode-only plan over the static buffers, one per window, computed on the
        device (gathered key slots and masks only where a layer has no paged kernel)."""
        size, width = tables.shape
        if self.gathers:
            span = width * self.block_size
            position = torch.arange(span, device=self.device)
            blocks = tables.long()[:, position // self.block_size]
            key_slots = (blocks * self.block_size + position % self.block_size).flatten()
            last = lens.long()[:, None] - 1
            masks = {w: _decode_mask(last, position, w) for w in self.windows}
        else:  # NOTE: paged kernels read the tables and lengths only
            key_slots = tables.new_zeros(size, dtype=torch.int64)
            unused = torch.ones(size, 1, 1, 1, dtype=torch.bool, device=self.device)
            masks = dict.fromkeys(self.windows, unused)
        groups = {
            w: DecodeGroup(
                rows=None, block_tables=tables, context_lens=lens, key_slots=key_slots, mask=m
            )
            for w, m in masks.items()
        }
        variants = {
            w: AttentionPlan(size, group, [], w)
            for w, group in groups.items()
            if w != self.sliding_window
        }
        return AttentionPlan(size, groups[self.sliding_window], [], self.sliding_window, variants)

    def graph_keys(self) -> Iterable[tuple[int, bool]]:
        """The recordings held: ``(size, with adapters)``."""
        return tuple(self._graphs)


def _decode_mask(last: torch.Tensor, position: torch.Tensor, window: int | None) -> torch.Tensor:
    """``[B, 1, 1, span]``: key positions each query (at ``last [B, 1]``) sees."""
    visible = position[None, :] <= last
    if window is not None:
        visible &= last - position[None, :] < window
    return visible[:, None, None, :]
