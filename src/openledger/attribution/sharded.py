"""An influence index's gradients built in shards: many processes or machines, the same bytes.

The examples are cut into batches exactly as a single-process build cuts them (by length,
up to ``batch_tokens`` padded tokens, :func:`~openledger.attribution.batched.length_batches`),
and the batches into ``shards`` contiguous runs. Each shard is one task for an executor
(anything with ``map(fn, items)``: a ``concurrent.futures`` pool, :class:`RayExecutor`):
it loads the adapter in its own process, sets the caller's torch thread count, computes
its batches' rows and writes them to ``<index>/shards/<checkpoint>-<shard>.npy``, renamed
into place only once complete. The caller then copies every shard's rows into
``gradients-<checkpoint>.npy`` in example order and removes the shard files. The same
batches through the same kernels give the same rows, so the files equal a single-process
build's byte for byte. A build interrupted part way resumes: shards whose file is there are
not computed again.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from openledger.attribution.batched import length_batches
from openledger.attribution.gradients import Projector, lora_pairs
from openledger.attribution.storage import load_rows, new_rows, put_rows
from openledger.exceptions import AttributionInputError

if TYPE_CHECKING:
    import torch

    from openledger.attribution.examples import IndexedExample

__all__ = ["Executor", "RayExecutor", "ShardTask", "build_shards", "run_shard"]


class Executor(Protocol):
    """What builds shards: ``map(fn, items)`` yielding ``fn(item)`` (any order of work)."""

    def map(self, fn: Callable[[Any], Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn`` to every item."""
        ...


@dataclass(frozen=True)
class ShardTask:
    """One shard of one checkpoint: everything a fresh process needs to compute it.

    Attributes:
        adapter: The adapter folder.
        checkpoint: A checkpoint folder whose weights replace the adapter's, or None.
        device: Torch device.
        threads: Torch threads (the caller's: the same kernels, the same bytes).
        projection: ``(dim, seed)`` of the projector.
        width: Values per row.
        examples: ``(input_ids, labels)`` of the shard's examples, batch after batch.
        batches: Each batch as indices into ``examples``.
        target: The shard file to write.
        compute_dtype: Precision of the forward and backward passes.
        storage_dtype: Dtype of the stored rows (see :mod:`.storage`).
    """

    adapter: str
    checkpoint: str | None
    device: str
    threads: int
    projection: tuple[int | None, int]
    width: int
    examples: list[tuple[list[int], list[int]]]
    batches: list[list[int]]
    target: str
    compute_dtype: str = "float32"
    storage_dtype: str = "float32"


def run_shard(task: ShardTask) -> str:
    """Compute one shard's rows and write them (atomically) to ``task.target``."""
    import numpy as np
    import torch

    from openledger.attribution.batched import batch_gradients
    from openledger.attribution.loading import checkpoint_weights, load_adapter, open_adapter

    torch.set_num_threads(task.threads)
    model, _ = load_adapter(open_adapter(task.adapter), task.device)
    projector = Projector(*task.projection)
    pairs = lora_pairs(model)
    rows = new_rows(None, (len(task.examples), task.width), task.storage_dtype)
    checkpoints = [task.checkpoint] if task.checkpoint else []
    with checkpoint_weights(model, checkpoints)[0]:
        for batch in task.batches:
            examples = [task.examples[i] for i in batch]
            block = batch_gradients(model, pairs, projector, examples, task.compute_dtype)
            put_rows(rows, np.asarray(batch), block, task.storage_dtype)
    partial = Path(task.target + ".partial")
    with partial.open("wb") as handle:
        np.save(handle, rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, task.target)
    return task.target


def build_shards(
    adapter: str,
    examples: Sequence[IndexedExample],
    checkpoints: Sequence[str | os.PathLike[str]],
    folder: Path,
    *,
    projector: Projector,
    width: int,
    batch_tokens: int,
    shards: int,
    executor: Executor,
    device: str,
    compute_dtype: str = "float32",
    storage_dtype: str = "float32",
) -> list[torch.Tensor]:
    """Build every checkpoint's gradient file through ``executor`` (see the module docstring).

    Returns:
        One memory-mapped ``n x width`` tensor per checkpoint (final weights: one), in
        ``storage_dtype``.

    Raises:
        AttributionInputError: ``shards`` below one.
    """
    import numpy as np
    import torch

    if shards < 1:
        raise AttributionInputError(f"shards must be >= 1, got {shards}")
    batches = length_batches([len(e.input_ids) for e in examples], batch_tokens)
    runs = _split(batches, shards)
    staging = folder / "shards"
    staging.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    found = []
    for number, checkpoint in enumerate(list(checkpoints) or [None]):
        tasks, placements = [], []
        for shard, run in enumerate(runs):
            order = [i for batch in run for i in batch]
            local, start = [], 0
            for batch in run:
                local.append(list(range(start, start + len(batch))))
                start += len(batch)
            target = staging / f"{number}-{shard}.npy"
            placements.append((target, order))
            if target.is_file():  # NOTE: finished by an earlier, interrupted build
                continue
            tasks.append(
                ShardTask(
                    adapter=adapter,
                    checkpoint=None if checkpoint is None else str(checkpoint),
                    device=device,
                    threads=threads,
                    projection=(projector.dim, projector.seed),
                    width=width,
                    examples=[(examples[i].input_ids, examples[i].labels) for i in order],
                    batches=local,
                    target=str(target),
                    compute_dtype=compute_dtype,
                    storage_dtype=storage_dtype,
                )
            )
        list(executor.map(run_shard, tasks))
        path = folder / f"gradients-{number}.npy"
        rows = new_rows(path, (len(examples), width), storage_dtype)
        for target, order in placements:
            shard = np.load(target)
            if shard.dtype != rows.dtype:
                raise AttributionInputError(
                    f"{target} (left by an earlier build) holds {shard.dtype} rows, not "
                    f"{rows.dtype} as storage_dtype={storage_dtype!r} stores; remove "
                    f"{staging} or build with that earlier build's settings"
                )
            rows[np.asarray(order, dtype=np.int64)] = shard
        rows.flush()
        del rows
        for target, _ in placements:
            target.unlink()
        found.append(load_rows(path, storage_dtype))
    staging.rmdir()
    return found


def _split(batches: list[list[int]], shards: int) -> list[list[list[int]]]:
    """``shards`` contiguous runs of batches, as even in examples as whole batches allow."""
    total = sum(len(b) for b in batches)
    runs: list[list[list[int]]] = [[] for _ in range(min(shards, len(batches)) or 1)]
    done = 0
    for batch in batches:
        runs[min(len(runs) - 1, done * len(runs) // max(total, 1))].append(batch)
        done += len(batch)
    return [run for run in runs if run]


class RayExecutor:
    """Shards as Ray tasks (``ray.remote``), on the cluster ``ray.init`` joined.

    Args:
        num_cpus: CPUs each task reserves.
        num_gpus: GPUs each task reserves (0 on CPU machines).

    Raises:
        MissingDependencyError: Ray is not installed.
    """

    def __init__(self, num_cpus: float = 1, num_gpus: float = 0) -> None:
        from openledger.exceptions import MissingDependencyError

        try:
            self._ray: Any = importlib.import_module("ray")  # NOTE: optional, no stubs
        except ImportError:
            raise MissingDependencyError("RayExecutor needs Ray: pip install 'ray'") from None
        self.num_cpus, self.num_gpus = num_cpus, num_gpus

    def map(self, fn: Callable[[Any], Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        """Run ``fn`` on every item as a Ray task; yields the results in order."""
        remote = self._ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus)(fn)
        refs = [remote.remote(*items) for items in zip(*iterables, strict=True)]
        return iter(self._ray.get(refs))
