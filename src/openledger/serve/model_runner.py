"""Runs scheduled sequences through the model: owns the weights, the KV cache and sampling.

Adapters with ``modules_to_save`` copies (:attr:`~openledger.serve.layers.lora.LoraState.heads`)
change a step's embedding and LM head per request, through the model contract
(``embed_input(ids, weight)``, ``forward(..., inputs_embeds=)``, ``compute_logits(h, weight)``)
that every family keeps: the base embedding for all tokens, then the rows of each slot
whose adapter saved ``embed_tokens`` embedded again with its copy; likewise logits rows of
slots whose adapter saved ``lm_head`` come from its copy, the others from the base head.

Decode steps may replay CUDA graphs (:mod:`~openledger.serve.cuda_graphs`,
``EngineConfig.cuda_graphs``): the KV cache has one block more than the block pool hands
out, the scratch block their padding rows write to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from openledger.serve.batch import BatchMetadata
from openledger.serve.config import EngineConfig
from openledger.serve.cuda_graphs import (
    GRAPH_BATCH_SIZES,
    CudaGraphCapture,
    DecodeGraphs,
    GraphCapture,
    resolve_cuda_graphs,
)
from openledger.serve.layers.attention import AttentionBackend
from openledger.serve.layers.linear import Linear
from openledger.serve.layers.lora import LoraState
from openledger.serve.layers.quant import Compute, Quantization
from openledger.serve.models.config import ModelConfig
from openledger.serve.models.loader import build_model
from openledger.serve.ops.step_attention import plan_attention
from openledger.serve.sampling import SampledTokens, sample
from openledger.serve.sequence import SequenceState

__all__ = ["ModelRunner", "kv_block_bytes", "runner_options"]


def kv_block_bytes(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one KV-cache block takes across all layers (keys and values)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * itemsize


def runner_options(
    config: EngineConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    num_blocks: int,
    max_positions: int,
    backend: AttentionBackend,
) -> dict[str, Any]:
    """:class:`ModelRunner`'s keyword arguments for an engine's settings and the sizes
    derived from them (the one-process engine's runner and every tensor-parallel rank's)."""
    return {
        "dtype": dtype,
        "device": device,
        "num_blocks": num_blocks,
        "block_size": config.block_size,
        "max_positions": max_positions,
        "backend": backend,
        "seed": config.seed,
        "cpu_kernels": config.cpu_kernels,
        "weight_packing": config.weight_packing,
        "quantization": config.quantization,
        "quantized_compute": config.quantized_compute,
        "cuda_graphs": config.cuda_graphs,
    }


class ModelRunner:
    """Model weights, per-layer KV caches, and one forward + sample per step.

    Args:
        folder: Checkpoint folder (``config.json`` + safetensors).
        config: The parsed architecture.
        dtype: Weight and cache dtype.
        device: Where the model runs.
        num_blocks: KV-cache blocks to allocate.
        block_size: Token slots per block.
        max_positions: Longest sequence served (rotary table size).
        backend: Decode attention path.
        seed: Seed of the stream used by requests without their own seed.
        cpu_kernels: Let the compiled CPU kernels run where they are built.
        weight_packing: Keep packed copies of float32 CPU projection weights.
        quantization: Quantise the projections and the LM head at load (``"int8"``,
            ``"fp8"``; see :mod:`~openledger.serve.layers.quant`); None keeps ``dtype``.
        quantized_compute: Arithmetic of int8 projections on CPU (``"float32"``, or
            ``"bfloat16"`` dot products where the CPU has AVX512-BF16).
        cuda_graphs: Replay decode steps from CUDA graphs (``EngineConfig.cuda_graphs``:
            ``"auto"`` where they apply on a CUDA device; see
            :func:`~openledger.serve.cuda_graphs.resolve_cuda_graphs`).

    Raises:
        ConfigError: ``cuda_graphs=True`` where graphs cannot run.
    """

    def __init__(
        self,
        folder: Path,
        config: ModelConfig,
        *,
        dtype: torch.dtype,
        device: torch.device,
        num_blocks: int,
        block_size: int,
        max_positions: int,
        backend: AttentionBackend,
        seed: int = 0,
        cpu_kernels: bool = True,
        weight_packing: bool = True,
        quantization: Quantization | None = None,
        cuda_graphs: bool | Literal["auto"] = "auto",
        quantized_compute: Compute = "float32",
    ):
        self.config = config
        self.device = device
        self.block_size = block_size
        # NOTE: a quantised base is quantised projection by projection while it loads
        self.model = build_model(
            folder,
            config,
            dtype=dtype,
            device=device,
            max_positions=max_positions,
            backend=backend,
            quantization=quantization,
            quantized_compute=quantized_compute,
        )
        self.model.set_cpu_paths(kernels=cpu_kernels, packing=weight_packing)
        self.quantization = quantization
        self.cpu_kernels = cpu_kernels
        self.max_positions = max_positions
        self.scratch_block = num_blocks
        """The KV block past the pool's, where padding rows of replayed steps write."""
        shape = (num_blocks + 1, block_size, config.num_kv_heads, config.head_dim)
        for attn in self.model.attention_layers():
            attn.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            attn.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.lora: LoraState | None = None  # set by the engine when adapters are served
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.graphs: DecodeGraphs | None = None
        """The decode steps' CUDA graphs, None when steps run eagerly."""
        on, self.graphs_off_reason = resolve_cuda_graphs(cuda_graphs, device, self.model)
        if on:
            self.enable_decode_graphs(CudaGraphCapture(device))

    def enable_decode_graphs(
        self, capture: GraphCapture, sizes: Sequence[int] = GRAPH_BATCH_SIZES
    ) -> DecodeGraphs:
        """Replay decode steps from recordings made by ``capture`` (a
        :class:`~openledger.serve.cuda_graphs.CudaGraphCapture` on a GPU; the engine does
        this itself under ``EngineConfig.cuda_graphs``), in batch-size buckets ``sizes``."""
        self.graphs = DecodeGraphs(
            self.model,
            capture,
            block_size=self.block_size,
            scratch_block=self.scratch_block,
            table_width=-(-self.max_positions // self.block_size),
            sliding_window=self.config.sliding_window,
            device=self.device,
            sizes=sizes,
        )
        self.graphs_off_reason = ""
        return self.graphs

    @torch.inference_mode()
    def run(self, seqs: list[SequenceState], num_new_tokens: list[int]) -> SampledTokens:
        """Compute one step and sample the next token of every sequence it completes.

        Args:
            seqs: The step's sequences, their ``num_computed_tokens`` already advanced
                past this step's tokens (see :class:`~openledger.serve.scheduler.Scheduler`).
            num_new_tokens: Tokens each sequence computes in this step.

        Returns:
            One token per sequence with ``num_computed_tokens == len(seq)``, in order.
        """
        replayed = None
        if self.graphs is not None:
            replayed = self.graphs.run(seqs, num_new_tokens, self.lora)
        if replayed is not None:
            rows = [i for i, seq in enumerate(seqs) if seq.num_computed_tokens == len(seq)]
            done = [seqs[i] for i in rows]
            if not done:
                return SampledTokens([], [])
            last = replayed if len(rows) == len(seqs) else replayed[self._tensor(rows)]
        else:
            input_ids, batch = self.prepare(seqs, num_new_tokens)
            embeds = None
            if self.lora is not None:
                self.lora.set_batch([seq.adapter_index for seq in seqs], batch.host_query_lens)
                embeds = self._embed(input_ids, self.lora)
            hidden = self.model(input_ids, batch, inputs_embeds=embeds)
            done = [seq for seq in seqs if seq.num_computed_tokens == len(seq)]
            if not done:
                return SampledTokens([], [])
            last = hidden[batch.logits_indices]
        logits = self._logits(last, [seq.adapter_index for seq in done])
        return sample(
            logits,
            [seq.params for seq in done],
            [seq.token_ids for seq in done],
            [seq.num_output_tokens for seq in done],
            self.generator,
            [_banned(seq) for seq in done],
            use_kernel=self.cpu_kernels,
        )

    def base_projection(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The base ``(weight, bias)`` of the fused projection ``name``
        (``layers.0.self_attn.qkv_proj``), as DoRA adapters are loaded against
        (dequantised when the base is quantised: the weight the projection computes with)."""
        module = self.model.get_submodule(name)
        if not isinstance(module, Linear):
            raise TypeError(f"{name} is no projection of the model")
        return module.base_weight(), module.bias

    def _embed(self, input_ids: torch.Tensor, lora: LoraState) -> torch.Tensor | None:
        """The first layer's input when a slot of the step has its own ``embed_tokens``
        (else None: the model embeds)."""
        step = lora.step
        runs = [] if step is None else step.segments
        own = [(lora.heads[slot].get("embed_tokens"), start, end) for slot, start, end in runs]
        if all(table is None for table, _, _ in own):
            return None
        hidden: torch.Tensor = self.model.embed_input(input_ids)
        for table, start, end in own:
            if table is not None:
                hidden[start:end] = self.model.embed_input(input_ids[start:end], table)
        return hidden

    def _logits(self, hidden: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """Logits of the rows ``hidden [N, H]``, row ``i`` through the LM head of slot
        ``slots[i]`` where its adapter saved one, else the model's."""
        heads = self.lora.heads if self.lora is not None else None
        rows: dict[int, list[int]] = {}
        for row, slot in enumerate(slots):
            own = heads is not None and slot >= 0 and "lm_head" in heads[slot]
            rows.setdefault(slot if own else -1, []).append(row)
        if heads is None or list(rows) == [-1]:
            logits: torch.Tensor = self.model.compute_logits(hidden)
            return logits
        parts = []
        for slot, group in rows.items():
            index = self._tensor(group)
            head = None if slot < 0 else heads[slot]["lm_head"]
            parts.append((index, self.model.compute_logits(hidden[index], head)))
        logits = parts[0][1].new_empty(len(slots), parts[0][1].shape[1])
        for index, part in parts:
            logits.index_copy_(0, index, part)
        return logits

    def prepare(
        self, seqs: list[SequenceState], num_new_tokens: list[int]
    ) -> tuple[torch.Tensor, BatchMetadata]:
        """Flatten the step's tokens and build the batch metadata on the device, once."""
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        last_rows: list[int] = []
        for seq, num_new in zip(seqs, num_new_tokens, strict=True):
            end = seq.num_computed_tokens
            start = end - num_new
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(self._slot(seq, pos) for pos in range(start, end))
            if end == len(seq):
                last_rows.append(len(input_ids) - 1)
        return self._tensor(input_ids), self._metadata(
            seqs, num_new_tokens, positions, slots, last_rows
        )

    def _metadata(
        self,
        seqs: list[SequenceState],
        query_lens: list[int],
        positions: list[int],
        slots: list[int],
        last_rows: list[int],
    ) -> BatchMetadata:
        context_lens = [seq.num_computed_tokens for seq in seqs]
        width = max(len(seq.block_table) for seq in seqs)
        tables = [seq.block_table + [0] * (width - len(seq.block_table)) for seq in seqs]
        return BatchMetadata(
            is_prefill=any(n > 1 for n in query_lens),
            positions=self._tensor(positions),
            slot_mapping=self._tensor(slots),
            block_tables=self._tensor(tables, torch.int32),
            context_lens=self._tensor(context_lens, torch.int32),
            logits_indices=self._tensor(last_rows),
            host_query_lens=list(query_lens),
            host_context_lens=context_lens,
            host_long_context=[seq.long_context for seq in seqs],
            attention=plan_attention(
                query_lens,
                context_lens,
                [seq.block_table for seq in seqs],
                block_size=self.block_size,
                sliding_window=self.config.sliding_window,
                device=self.device,
            ),
        )

    def _slot(self, seq: SequenceState, position: int) -> int:
        return (
            seq.block_table[position // self.block_size] * self.block_size
            + position % self.block_size
        )

    def _tensor(
        self, values: list[int] | list[list[int]], dtype: torch.dtype = torch.int64
    ) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)


def _banned(seq: SequenceState) -> frozenset[int]:
    """Tokens that would end the sequence before its ``min_tokens``."""
    if seq.num_output_tokens >= seq.params.min_tokens:
        return frozenset()
    stops = frozenset(seq.params.stop_token_ids)
    return stops if seq.params.ignore_eos else stops | seq.eos_token_ids
