"""A tensor-parallel worker: rank ``r >= 1``, spawned by rank 0's
:class:`~openledger.serve.parallel.group.WorkerGroup`.

It builds its share of the model (:func:`~openledger.serve.parallel.sharding.shard_config`),
the same adapter slots as rank 0, then runs each step rank 0 sends: the same tensors, LoRA
step, forward pass and logits calls, so that the collectives meet. It samples nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist
from torch.distributed import TCPStore  # type: ignore[attr-defined]  # public, not in the stubs

from openledger.serve.engine_adapters import attach_adapter_slots
from openledger.serve.model_runner import ModelRunner
from openledger.serve.ops.lora_torch import LoraWeights
from openledger.serve.parallel.group import STORE_HOST, WorkerSpec, prefer_loopback
from openledger.serve.parallel.lora import shard_adapter
from openledger.serve.parallel.sharding import shard_config
from openledger.serve.parallel.step import StepInputs

__all__ = ["WorkerRunner", "run_worker"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_WATCHDOG_PERIOD_S = 0.2


class WorkerRunner(ModelRunner):
    """A worker rank's runner: the step's forward pass and logits, no sampling."""

    @torch.inference_mode()
    def run_step(self, inputs: StepInputs) -> None:
        """Run what rank 0's :meth:`ModelRunner.run` runs for the same step."""
        input_ids, batch = inputs.tensors(self.device, self.block_size, self.config.sliding_window)
        embeds = None
        if self.lora is not None:
            self.lora.set_batch(inputs.adapter_slots, inputs.query_lens)
            embeds = self._embed(input_ids, self.lora)
        hidden = self.model(input_ids, batch, inputs_embeds=embeds)
        if inputs.logits_slots:
            self._logits(hidden[batch.logits_indices], inputs.logits_slots)

    def install(
        self,
        slot: int,
        modules: Mapping[str, LoraWeights] | None,
        heads: Mapping[str, torch.Tensor] | None,
    ) -> None:
        """Install this rank's part of an adapter (None: empty the slot)."""
        if self.lora is None:
            raise RuntimeError("this worker serves no adapters")
        dtype = self.model.embed_tokens.weight.dtype
        if modules is not None:
            modules = {n: w.to(self.device, dtype) for n, w in modules.items()}
        if heads is not None:
            heads = {n: t.to(self.device, dtype) for n, t in heads.items()}
        rank, size = dist.get_rank(), dist.get_world_size()
        own, own_heads = shard_adapter(self.model, modules, heads, rank, size)
        self.lora.install(slot, own, own_heads)


def run_worker(spec: WorkerSpec, rank: int, conn: Connection) -> None:
    """The worker process's entry point (``multiprocessing`` spawn target)."""
    _follow_parent(spec.parent_pid, spec.pdeathsig)
    try:
        torch.set_num_threads(spec.num_threads)
        conn.send(("started",))
        prefer_loopback(spec.dist_backend)
        device = _device(spec, rank)
        timeout = timedelta(seconds=spec.timeout_s)
        store = TCPStore(STORE_HOST, spec.store_port, spec.size, False, timeout=timeout)
        dist.init_process_group(
            spec.dist_backend, store=store, rank=rank, world_size=spec.size, timeout=timeout
        )
        runner = _build_runner(spec, rank, device)
        conn.send(("ready",))
        _serve(conn, runner)
    except BaseException:  # NOTE: report anything to rank 0, then go
        logger.exception("tensor-parallel worker rank %d failed", rank)
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        os._exit(1)
    dist.destroy_process_group()


def _device(spec: WorkerSpec, rank: int) -> torch.device:
    if spec.device.type != "cuda":
        return spec.device
    device = torch.device("cuda", (spec.device.index or 0) + rank)
    torch.cuda.set_device(device)
    return device


def _build_runner(spec: WorkerSpec, rank: int, device: torch.device) -> WorkerRunner:
    config = shard_config(spec.model_config, rank, spec.size)
    runner = WorkerRunner(spec.folder, config, **spec.runner_options(device))
    attach_adapter_slots(spec.engine_config, runner)
    return runner


def _serve(conn: Connection, runner: WorkerRunner) -> None:
    """Run rank 0's commands until ``close`` or until its pipe closes."""
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        kind = message[0]
        if kind == "step":
            runner.run_step(message[1])
        elif kind == "install":
            runner.install(message[1], message[2], message[3])
        elif kind == "close":
            return
        else:
            raise RuntimeError(f"unknown command {kind!r}")


def _follow_parent(parent_pid: int, pdeathsig: bool) -> None:
    """Exit when the engine's process is gone, even if it was killed (-9)."""
    if pdeathsig and sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # NOTE: it died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_WATCHDOG_PERIOD_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
