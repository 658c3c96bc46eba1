"""Rank 0's handle on the other tensor-parallel ranks: worker processes it starts itself.

::

    engine process (rank 0)                      worker process (rank r >= 1, spawned)
    scheduler, sampling, detokenising            the same model's rank-r share
    ModelRunner.prepare ──pipe: step inputs──▶   same tensors, same forward
    forward ◀──── all-reduce / gather (torch.distributed: gloo on CPU, NCCL on CUDA) ───▶

Commands (a step's inputs, an adapter to install, close) go over one pipe per worker,
pickled once; only the forward pass's collectives use the process group, whose timeout
bounds how long a rank waits for a hung peer (a dead peer's closed connection fails the
collective at once). A worker exits when told to, when its pipe closes, and when its
parent dies (``PR_SET_PDEATHSIG`` on Linux, and a watchdog polling the parent's pid).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch.distributed import TCPStore  # type: ignore[attr-defined]  # public, not in the stubs

from openledger.exceptions import ConfigError, EngineDeadError
from openledger.serve.config import EngineConfig
from openledger.serve.layers.attention import AttentionBackend
from openledger.serve.models.config import ModelConfig

__all__ = [
    "COLLECTIVE_TIMEOUT_S",
    "STARTUP_TIMEOUT_S",
    "STORE_HOST",
    "WorkerGroup",
    "WorkerSpec",
    "prefer_loopback",
]

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_S = 120.0
"""How long a rank waits in a collective for a peer that neither answers nor dies."""
STORE_HOST = "127.0.0.1"
"""Where rank 0's rendezvous store listens (all ranks run on this host)."""
STARTUP_TIMEOUT_S = 600.0
"""How long rank 0 waits for the workers to load their share of the model."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs to build its rank (pickled to the spawned process).

    Attributes:
        folder: Checkpoint folder.
        model_config: The whole model's architecture (each rank takes its share).
        engine_config: The engine's settings (KV blocks, CPU paths, adapter slots).
        dtype: Weight and cache dtype.
        device: Rank 0's device; rank ``r`` runs on ``cuda:(index + r)``, or the CPU.
        num_blocks: KV-cache blocks per rank.
        max_positions: Longest sequence served.
        backend: Decode attention path.
        size: Ranks in all.
        store_port: Port of rank 0's rendezvous store on 127.0.0.1.
        dist_backend: ``"gloo"`` or ``"nccl"``.
        timeout_s: The process group's timeout.
        parent_pid: The engine's process; workers exit when it is gone.
        pdeathsig: Ask the kernel to kill the worker with its parent's starting thread
            (only when that thread is the main thread, which lives as long as the process).
        num_threads: torch threads of each worker.
    """

    folder: Path
    model_config: ModelConfig
    engine_config: EngineConfig
    dtype: torch.dtype
    device: torch.device
    num_blocks: int
    max_positions: int
    backend: AttentionBackend
    size: int
    store_port: int
    dist_backend: str
    timeout_s: float
    parent_pid: int
    pdeathsig: bool
    num_threads: int

    def runner_options(self, device: torch.device) -> dict[str, Any]:
        """Keyword arguments of every rank's :class:`ModelRunner` (on ``device``)."""
        from openledger.serve.model_runner import runner_options

        options = runner_options(
            self.engine_config,
            dtype=self.dtype,
            device=device,
            num_blocks=self.num_blocks,
            max_positions=self.max_positions,
            backend=self.backend,
        )
        # NOTE: rank 0 sends every step's inputs (eager steps)
        return {**options, "cuda_graphs": False}


@dataclass(slots=True)
class _State:
    """Shared by the group and its finalizer."""

    closed: bool = False
    joined: bool = False


@dataclass(slots=True)
class _Worker:
    rank: int
    process: BaseProcess
    conn: Connection


class WorkerGroup:
    """Starts ranks ``1 .. size - 1`` as spawned processes and talks to them.

    The process group is the default one: one tensor-parallel engine per process at a
    time. Closed by :meth:`close`, when garbage collected, or at interpreter exit.

    Args:
        folder: Checkpoint folder.
        model_config: The whole model.
        engine_config: The engine's settings (``tensor_parallel_size`` ranks).
        dtype: Weight dtype.
        device: Rank 0's device.
        num_blocks: KV-cache blocks per rank.
        max_positions: Longest sequence served.
        backend: Decode attention path.

    Raises:
        ConfigError: A process group already exists in this process, or too few CUDA
            devices.
    """

    def __init__(
        self,
        folder: Path,
        model_config: ModelConfig,
        engine_config: EngineConfig,
        *,
        dtype: torch.dtype,
        device: torch.device,
        num_blocks: int,
        max_positions: int,
        backend: AttentionBackend,
    ) -> None:
        size = engine_config.tensor_parallel_size
        if dist.is_initialized():
            raise ConfigError(
                "a torch.distributed process group already exists in this process (another "
                "tensor-parallel engine?); close that engine first"
            )
        if device.type == "cuda" and (device.index or 0) + size > torch.cuda.device_count():
            raise ConfigError(
                f"tensor_parallel_size={size} from {device} needs CUDA devices "
                f"{device.index or 0}..{(device.index or 0) + size - 1}; "
                f"{torch.cuda.device_count()} present"
            )
        self.size = size
        # NOTE: port 0: the OS picks a free port, and no other process can take it meanwhile
        self._store = TCPStore(
            STORE_HOST,
            0,
            size,
            True,
            timeout=timedelta(seconds=STARTUP_TIMEOUT_S),
            wait_for_workers=False,
        )
        self.spec = WorkerSpec(
            folder=folder,
            model_config=model_config,
            engine_config=engine_config,
            dtype=dtype,
            device=device,
            num_blocks=num_blocks,
            max_positions=max_positions,
            backend=backend,
            size=size,
            store_port=self._store.port,
            dist_backend="nccl" if device.type == "cuda" else "gloo",
            timeout_s=COLLECTIVE_TIMEOUT_S,
            parent_pid=os.getpid(),
            pdeathsig=threading.current_thread() is threading.main_thread(),
            num_threads=max(1, torch.get_num_threads() // size),
        )
        self._state = _State()
        self._broken: str | None = None
        self._workers = _spawn(self.spec)
        self._finalizer = weakref.finalize(self, _shutdown, list(self._workers), self._state)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, rank 1 first."""
        return [int(w.process.pid or 0) for w in self._workers]

    def join(self) -> None:
        """Join the process group as rank 0 (after the workers started).

        Raises:
            EngineDeadError: A worker died before joining.
        """
        self.wait_for("started")
        prefer_loopback(self.spec.dist_backend)
        try:
            dist.init_process_group(
                self.spec.dist_backend,
                store=self._store,
                rank=0,
                world_size=self.size,
                timeout=timedelta(seconds=self.spec.timeout_s),
            )
        except Exception as exc:
            self.raise_failure(exc)
        self._state.joined = True
        logger.info(
            "tensor parallel: %d ranks over %s, workers %s",
            self.size,
            self.spec.dist_backend,
            self.pids,
        )

    def wait_for(self, kind: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until every worker has said ``kind`` (``"started"``, ``"ready"``).

        Raises:
            EngineDeadError: A worker failed (its error is in the message), died or
                stayed silent for ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            while not worker.conn.poll(0.05):
                if not worker.process.is_alive():
                    raise self._dead(worker)
                if time.monotonic() > deadline:
                    raise EngineDeadError(
                        f"tensor-parallel worker rank {worker.rank} (pid {worker.process.pid}) "
                        f"did not report {kind!r} within {timeout_s:.0f} s"
                    )
            message = worker.conn.recv()
            if message[0] == "error":
                self._broken = f"tensor-parallel worker rank {worker.rank} failed:\n{message[1]}"
                raise EngineDeadError(self._broken)
            if message[0] != kind:
                raise EngineDeadError(
                    f"worker rank {worker.rank} said {message[0]!r}, not {kind!r}"
                )

    def send(self, *message: Any) -> None:
        """Send a command to every worker (pickled once).

        Raises:
            EngineDeadError: The group is closed or broken, or a worker is gone.
        """
        self.check()
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        for worker in self._workers:
            try:
                worker.conn.send_bytes(data)
            except OSError:
                raise self._dead(worker) from None

    def check(self) -> None:
        """Raise if the group cannot run a step.

        Raises:
            EngineDeadError: Closed, broken by an earlier failure, or a worker is gone.
        """
        if self._state.closed:
            raise EngineDeadError("this tensor-parallel engine was closed")
        if self._broken is not None:
            raise EngineDeadError(self._broken)
        for worker in self._workers:
            if not worker.process.is_alive():
                raise self._dead(worker)

    def raise_failure(self, exc: BaseException) -> NoReturn:
        """Raise for ``exc``, raised on rank 0 while the ranks work together: an
        :class:`EngineDeadError` naming a worker that died, else ``exc`` itself. Either
        way the group is broken from now on (the ranks may be out of step).

        Raises:
            EngineDeadError: A worker is gone (``exc`` is its cause).
        """
        for worker in self._workers:
            worker.process.join(1.0)  # NOTE: a peer's closed connection arrives before its exit
            if not worker.process.is_alive():
                raise self._dead(worker) from exc
        self._broken = (
            f"a tensor-parallel step failed ({type(exc).__name__}: {exc}); the ranks may be "
            "out of step: close this engine and build a new one"
        )
        raise exc

    def close(self) -> None:
        """Stop the workers (told to exit, killed after a grace period) and leave the
        process group; idempotent."""
        self._finalizer()

    def _dead(self, worker: _Worker) -> EngineDeadError:
        code = worker.process.exitcode
        how = (
            f"was killed by signal {-code}"
            if code is not None and code < 0
            else (f"exited with code {code}" if code is not None else "stopped answering")
        )
        detail = ""
        try:
            if worker.conn.poll(0):
                message = worker.conn.recv()
                if message[0] == "error":
                    detail = f":\n{message[1]}"
        except (OSError, EOFError):
            pass
        self._broken = (
            f"tensor-parallel worker rank {worker.rank} (pid {worker.process.pid}) {how}"
            f"{detail}; this engine serves no further requests"
        )
        return EngineDeadError(self._broken)


def _spawn(spec: WorkerSpec) -> list[_Worker]:
    from openledger.serve.parallel.worker import run_worker

    context = multiprocessing.get_context("spawn")
    workers = []
    for rank in range(1, spec.size):
        mine, theirs = context.Pipe()
        process = context.Process(
            target=run_worker,
            args=(spec, rank, theirs),
            name=f"openledger-tp-rank{rank}",
            daemon=True,
        )
        process.start()
        theirs.close()
        workers.append(_Worker(rank, process, mine))
    return workers


def prefer_loopback(backend: str) -> None:
    """Let gloo listen on the loopback interface only (all ranks are on this host)."""
    if backend == "gloo" and sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def _shutdown(workers: list[_Worker], state: _State) -> None:
    """Tell each worker to exit, kill it after a grace period, leave the group."""
    state.closed = True
    data = pickle.dumps(("close",))
    for worker in workers:
        with contextlib.suppress(OSError):
            worker.conn.send_bytes(data)
    for worker in workers:
        worker.process.join(5.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5.0)
        worker.conn.close()
    if state.joined and dist.is_initialized():
        dist.destroy_process_group()
