"""Rank 0's model runner for a tensor-parallel engine, and how the engine starts one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from openledger.exceptions import ConfigError
from openledger.serve.batch import BatchMetadata
from openledger.serve.config import EngineConfig
from openledger.serve.engine_adapters import adapter_slots
from openledger.serve.layers.attention import AttentionBackend
from openledger.serve.model_runner import ModelRunner
from openledger.serve.models.config import ModelConfig
from openledger.serve.ops.lora_torch import LoraWeights
from openledger.serve.parallel.group import WorkerGroup
from openledger.serve.parallel.lora import shard_adapter
from openledger.serve.parallel.sharding import check_divisible, shard_config
from openledger.serve.parallel.step import StepInputs
from openledger.serve.sampling import SampledTokens
from openledger.serve.sequence import SequenceState

__all__ = ["ParallelModelRunner", "start_parallel_runner"]


class ParallelModelRunner(ModelRunner):
    """Rank 0 of a tensor-parallel model: its share of the weights, the scheduler's steps
    sent to the other ranks, the gathered logits sampled here.

    Args:
        group: The other ranks (already in the process group).
        folder: Checkpoint folder.
        config: Rank 0's :func:`~openledger.serve.parallel.sharding.shard_config`.
        **kwargs: As :class:`ModelRunner`.
    """

    def __init__(self, group: WorkerGroup, folder: Path, config: ModelConfig, **kwargs: Any):
        self.group = group
        super().__init__(folder, config, **kwargs)

    def run(self, seqs: list[SequenceState], num_new_tokens: list[int]) -> SampledTokens:
        """As :meth:`ModelRunner.run`, on every rank.

        Raises:
            EngineDeadError: A worker died (named, with its exit code and error), the
                engine was closed, or an earlier step failed.
        """
        self.group.check()
        try:
            return super().run(seqs, num_new_tokens)
        except Exception as exc:
            self.group.raise_failure(exc)

    def prepare(
        self, seqs: list[SequenceState], num_new_tokens: list[int]
    ) -> tuple[torch.Tensor, BatchMetadata]:
        """As :meth:`ModelRunner.prepare`; the other ranks get the same inputs and start
        the step's forward pass (every call is a step: :meth:`run` makes it)."""
        input_ids, batch = super().prepare(seqs, num_new_tokens)
        self.group.send("step", StepInputs.of(input_ids, batch, seqs))
        return input_ids, batch

    def install_adapter(
        self,
        slot: int,
        modules: Mapping[str, LoraWeights] | None,
        heads: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Put an adapter's weights into ``slot`` on every rank, each rank keeping its
        part (:mod:`~openledger.serve.parallel.lora`); None empties the slot. The adapter
        store calls this instead of ``LoraState.install``."""
        if self.lora is None:
            raise ConfigError("this engine serves no adapters (EngineConfig.max_adapter_slots=0)")
        cpu = torch.device("cpu")
        host = None if modules is None else {n: w.to(cpu, w.a.dtype) for n, w in modules.items()}
        host_heads = None if heads is None else {n: t.cpu() for n, t in heads.items()}
        self.group.send("install", slot, host, host_heads)
        own, own_heads = shard_adapter(self.model, modules, heads, 0, self.group.size)
        self.lora.install(slot, own, own_heads)

    def close(self) -> None:
        """Stop the other ranks and leave the process group."""
        self.group.close()


def start_parallel_runner(
    folder: Path,
    model_config: ModelConfig,
    config: EngineConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    num_blocks: int,
    max_positions: int,
    backend: AttentionBackend,
) -> ParallelModelRunner:
    """Start ``config.tensor_parallel_size - 1`` worker processes, join them in a process
    group and load rank 0's share of the model.

    Raises:
        ConfigError: The model does not split ``tensor_parallel_size`` ways, a quantised
            base or CUDA graphs were asked for, fewer adapter slots than sequences, or a
            process group already exists in this process.
        EngineDeadError: A worker failed to start (its error is in the message).
    """
    size = config.tensor_parallel_size
    check_divisible(model_config, size)
    adapter_slots(config)  # NOTE: refuse bad settings here, not in a worker
    if config.quantization is not None:
        raise ConfigError(
            f"quantization={config.quantization!r} with tensor_parallel_size={size} is not "
            "served yet; use one of them"
        )
    if config.cuda_graphs is True:
        raise ConfigError(
            f"cuda_graphs=True with tensor_parallel_size={size} is not served yet; a split "
            "model runs its steps eagerly (leave cuda_graphs='auto' or set it False)"
        )
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    group = WorkerGroup(
        folder,
        model_config,
        config,
        dtype=dtype,
        device=device,
        num_blocks=num_blocks,
        max_positions=max_positions,
        backend=backend,
    )
    try:
        group.join()
        options = group.spec.runner_options(device)
        runner = ParallelModelRunner(group, folder, shard_config(model_config, 0, size), **options)
        group.wait_for("ready")
    except BaseException:
        group.close()
        raise
    return runner
