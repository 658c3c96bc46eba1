"""Build an engine's parts from a model name and an :class:`EngineConfig`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from openledger.exceptions import ConfigError, MissingDependencyError
from openledger.models.loading import parse_device, parse_dtype
from openledger.models.resolve import resolve_model
from openledger.serve.config import EngineConfig
from openledger.serve.layers.attention import AttentionBackend
from openledger.serve.model_runner import ModelRunner, kv_block_bytes, runner_options
from openledger.serve.models.config import ModelConfig
from openledger.serve.parallel.runner import ParallelModelRunner, start_parallel_runner

__all__ = ["EngineParts", "build_components", "pick_backend"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineParts:
    """What :func:`build_components` assembles for the engine facade."""

    model_config: ModelConfig
    tokenizer: Any
    runner: ModelRunner
    max_model_len: int
    num_blocks: int
    eos_token_ids: frozenset[int]
    close: Callable[[], None] | None = None
    """Stops what the parts started (a tensor-parallel engine's worker processes)."""


def build_components(base_model: str | os.PathLike[str], config: EngineConfig) -> EngineParts:
    """Resolve the model, size the KV cache, load weights and tokenizer."""
    from transformers import AutoTokenizer

    folder = Path(resolve_model(base_model).path)
    model_config = ModelConfig.from_folder(folder)
    device = parse_device(config.device)
    dtype = parse_dtype(config.dtype, device)
    max_model_len = _max_model_len(model_config, config)
    num_blocks = _num_blocks(model_config, config, dtype)
    backend = pick_backend(config.attention_backend, device)
    runner: ModelRunner
    if config.tensor_parallel_size > 1:
        runner = start_parallel_runner(
            folder,
            model_config,
            config,
            dtype=dtype,
            device=device,
            num_blocks=num_blocks,
            max_positions=max_model_len,
            backend=backend,
        )
    else:
        options = runner_options(
            config,
            dtype=dtype,
            device=device,
            num_blocks=num_blocks,
            max_positions=max_model_len,
            backend=backend,
        )
        runner = ModelRunner(folder, model_config, **options)
    close = runner.close if isinstance(runner, ParallelModelRunner) else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except BaseException:
        if close is not None:  # NOTE: no engine will own the workers to close them
            close()
        raise
    eos = set(model_config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    logger.info(
        "engine: %s on %s/%s, %d KV blocks, %s attention",
        folder,
        device,
        dtype,
        num_blocks,
        backend,
    )
    return EngineParts(
        model_config, tokenizer, runner, max_model_len, num_blocks, frozenset(eos), close
    )


def pick_backend(choice: str, device: torch.device) -> AttentionBackend:
    """Resolve ``"auto"``; check that Triton is usable when asked for.

    Raises:
        MissingDependencyError: Triton asked for but not installed.
        ConfigError: Triton asked for on CPU without ``TRITON_INTERPRET=1``.
    """
    if choice == "reference" or (choice == "auto" and device.type != "cuda"):
        return "reference"
    try:
        import triton  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:
        if choice == "auto":
            return "reference"
        raise MissingDependencyError(
            "the triton backend needs `pip install openledger[gpu]`"
        ) from exc
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("attention_backend='triton' needs a CUDA device (or TRITON_INTERPRET=1)")
    return "triton"


def _max_model_len(model_config: ModelConfig, config: EngineConfig) -> int:
    limit = model_config.max_position_embeddings
    if not config.enable_chunked_prefill:  # NOTE: a whole prompt must fit one step
        limit = min(limit, config.max_num_batched_tokens)
    if config.max_model_len is None:
        return limit
    if config.max_model_len > limit:
        capped = "" if config.enable_chunked_prefill else " or max_num_batched_tokens"
        raise ConfigError(
            f"max_model_len={config.max_model_len} exceeds the model's context "
            f"({model_config.max_position_embeddings}){capped}: {limit}"
        )
    return config.max_model_len


def _num_blocks(model_config: ModelConfig, config: EngineConfig, dtype: torch.dtype) -> int:
    """KV blocks per rank: ``kv_cache_memory`` is each rank's budget, and a rank of a
    tensor-parallel engine holds its share of the KV heads."""
    if config.num_blocks is not None:
        return config.num_blocks
    if config.tensor_parallel_size > 1:
        from openledger.serve.parallel.sharding import shard_config

        model_config = shard_config(model_config, 0, config.tensor_parallel_size)
    per_block = kv_block_bytes(model_config, config.block_size, dtype)
    num_blocks = config.kv_cache_memory // per_block
    if num_blocks < 1:
        raise ConfigError(
            f"kv_cache_memory={config.kv_cache_memory} bytes holds no block "
            f"({per_block} bytes each); raise it"
        )
    return num_blocks
