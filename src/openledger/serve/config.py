"""Engine settings (validated once, at construction)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from openledger.validation import CheckedModel

__all__ = ["ENVIRONMENT_OVERRIDES", "EngineConfig"]

ENVIRONMENT_OVERRIDES: dict[str, str] = {
    "OPENLEDGER_LORA_BACKEND": "lora_backend",
    "OPENLEDGER_CPU_KERNELS": "cpu_kernels",
    "OPENLEDGER_ONEDNN": "weight_packing",
}
"""Environment variables that override a setting of every engine in the process (for
operators; code passes the setting): ``OPENLEDGER_LORA_BACKEND=torch|triton``,
``OPENLEDGER_CPU_KERNELS=0``, ``OPENLEDGER_ONEDNN=0`` (no packed weights). Read once,
when an engine is built (:meth:`EngineConfig.with_environment`)."""


class EngineConfig(CheckedModel):
    """How an :class:`~openledger.serve.Engine` sizes its cache and batches.

    Invalid values raise :class:`~openledger.exceptions.ConfigError` (a ``ValueError``)
    naming the field. Every path switch is a field here; :data:`ENVIRONMENT_OVERRIDES`
    names the few an operator may also set from the environment.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    what = "engine config"

    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        default=None,
        description="Weight and KV-cache dtype; default float32 on CPU, bfloat16 on CUDA.",
    )
    device: str | None = Field(
        default=None, description="'cpu', 'cuda', 'cuda:1'...; default CUDA if present."
    )
    block_size: int = Field(
        default=16, description="Token slots per KV-cache block (a power of two <= 256)."
    )
    kv_cache_memory: int = Field(
        default=256 * 2**20,
        gt=0,
        description="Bytes for the KV cache; the block count is derived from it.",
    )
    num_blocks: int | None = Field(
        default=None, ge=1, description="Exact number of KV blocks; overrides kv_cache_memory."
    )
    max_num_seqs: int = Field(default=64, ge=1, description="Most sequences running at once.")
    max_num_batched_tokens: int = Field(
        default=8192,
        ge=1,
        description="Most tokens computed in one step (decode tokens plus prompt chunks).",
    )
    enable_chunked_prefill: bool = Field(
        default=True,
        description="Split prompts longer than the step's remaining token budget over "
        "several steps; when off, a prompt is computed in one step and max_num_batched_tokens "
        "caps its length.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=2,
        description="Longest prompt + output; default the model's context (capped by "
        "max_num_batched_tokens when chunked prefill is off).",
    )
    enable_prefix_caching: bool = Field(
        default=True, description="Share KV blocks of equal prefixes."
    )
    attention_backend: Literal["auto", "reference", "triton"] = Field(
        default="auto",
        description="Decode attention: 'triton' on CUDA under 'auto', else 'reference'.",
    )
    lora_backend: Literal["auto", "cpu", "torch", "triton"] = Field(
        default="auto",
        description="Multi-adapter LoRA updates: 'cpu' (the compiled CPU kernel, float32 "
        "on CPU), 'torch' (torch ops: batched or per-adapter matmuls) or 'triton' (SGMV/"
        "BGMV kernels); 'auto' takes 'triton' on CUDA where installed, else 'cpu' where "
        "the kernel is built and cpu_kernels allows it, else 'torch'.",
    )
    lora_batched_decode: bool = Field(
        default=True,
        description="Runs of decode steps with the same adapters take one batched matmul "
        "over stacked adapter weights (torch backend; off: one matmul per adapter).",
    )
    cpu_kernels: bool = Field(
        default=True,
        description="Run the compiled CPU kernels (float32 on CPU, where a C compiler "
        "built them: projections, attention, norms, LoRA, sampling); off: torch ops only.",
    )
    weight_packing: bool = Field(
        default=True,
        description="Keep a packed copy of each float32 CPU projection weight (the "
        "kernels' panels, else oneDNN's layout) for decode-sized matmuls; off: plain GEMMs "
        "and no second copy of the weights.",
    )
    quantization: Literal["int8", "fp8"] | None = Field(
        default=None,
        description="Store the base model's projection weights (and its LM head) quantised "
        "at load, with one float scale per output channel: 'int8' (weight-only; on CPU the "
        "compiled kernel reads the int8 weights, elsewhere they are dequantised per call), "
        "'fp8' (E4M3; torch._scaled_mm on CUDA devices of compute capability 8.9 and up, "
        "else dequantised per call). LoRA updates stay in the activation dtype. None: the "
        "checkpoint's weights in `dtype`.",
    )
    quantized_compute: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Arithmetic of int8 projections on CPU: 'float32' (the dequantised "
        "weight's result up to rounding) or 'bfloat16' (the activations rounded to "
        "bfloat16 for AVX512-BF16 dot products with float32 sums: about twice the "
        "multiply-adds per instruction, where the CPU has them; float32 elsewhere).",
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="Processes the model is split over (Megatron-style: attention heads and "
        "MLP columns per rank, one all-reduce after each row-parallel projection); the "
        "engine starts the other ranks itself. NCCL on CUDA, gloo on CPU.",
    )
    cuda_graphs: bool | Literal["auto"] = Field(
        default="auto",
        description="Capture decode steps as CUDA graphs (per batch-size bucket) and replay "
        "them; prefill and mixed steps run eagerly. 'auto': on for CUDA devices, off "
        "elsewhere; True on a device without CUDA is refused.",
    )
    seed: int = Field(
        default=0, ge=0, description="Seed of the stream for requests without their own seed."
    )
    max_adapter_slots: int | None = Field(
        default=None,
        ge=0,
        description="Device slots for LoRA adapters (at least max_num_seqs, so every running "
        "request's adapter fits); None means max_num_seqs, 0 serves no adapters.",
    )
    max_adapter_host_memory: int = Field(
        default=2**30,
        gt=0,
        description="Bytes of adapter weights kept in host memory; least recently used go first.",
    )
    max_adapter_heads: int = Field(
        default=2,
        ge=0,
        description="Adapters with modules_to_save (whole [vocab, hidden] copies of lm_head "
        "and/or embed_tokens) registered at once; registering one more is refused.",
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 1 or value > 256 or value & (value - 1):
            raise ValueError(f"block_size must be a power of two in [1, 256], got {value}")
        return value

    def with_environment(self, environ: Mapping[str, str] | None = None) -> EngineConfig:
        """This config with :data:`ENVIRONMENT_OVERRIDES` applied from ``environ``
        (default ``os.environ``); unset variables change nothing.

        Raises:
            ConfigError: A variable's value is not valid for its setting.
        """
        environ = os.environ if environ is None else environ
        changes: dict[str, object] = {}
        for variable, field in ENVIRONMENT_OVERRIDES.items():
            value = environ.get(variable)
            if value is None or value == "":
                continue
            is_switch = isinstance(getattr(self, field), bool)
            changes[field] = value not in ("0", "false", "off") if is_switch else value
        if not changes:
            return self
        return type(self)(**{**self.model_dump(), **changes})
