"""CPU stand-ins for ``CudaGraphCapture`` (openledger.serve.cuda_graphs.GraphCapture).

* :class:`RecordedCapture` does what a CUDA graph does, on CPU tensors: after a warm-up
  run it records every torch op of one run of the step's forward pass (through a
  ``TorchDispatchMode``), with the tensors it read and wrote, and a replay runs exactly
  those ops again on exactly those tensors. Python does not run at replay, so whatever the
  forward pass decided on the host (shapes, branches, values it read into Python, tensors
  built from Python lists) stays as it was recorded, as on a GPU; a read of a tensor's
  value into Python while recording (``.item()``, ``.tolist()``, ``nonzero``), which would
  break a CUDA capture, is refused. Work done outside torch ops (a Triton kernel under the
  interpreter) is not recorded: use it for torch-op paths.
* :class:`RerunCapture` runs the forward pass again at every replay, on the same static
  buffers: for paths with Triton kernels (run by the interpreter on CPU), where only the
  buffers' contents, not frozen host decisions, can be checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

Forward = Callable[[], torch.Tensor]

_HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
}


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple[Any, ...], dict[str, Any], Any]] = []

    def __torch_dispatch__(  # type: ignore[no-untyped-def]
        self, func, types, args=(), kwargs=None
    ):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            raise AssertionError(f"{func} reads a tensor's value on the host while recording")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _replay(ops: list[tuple[Any, tuple[Any, ...], dict[str, Any], Any]]) -> None:
    for func, args, kwargs, out in ops:
        new = func(*args, **kwargs)
        for old_t, new_t in zip(tree_leaves(out), tree_leaves(new), strict=True):
            if not isinstance(old_t, torch.Tensor) or old_t is new_t:
                continue
            if old_t.untyped_storage().data_ptr() == new_t.untyped_storage().data_ptr():
                continue  # NOTE: a view of a recorded tensor, or an in-place op's result
            old_t.copy_(new_t)


class _Counted:
    def __init__(self) -> None:
        self.recordings = 0
        self.replays = 0


class RecordedCapture(_Counted):
    """Records the torch ops of one run and replays them (see the module docstring)."""

    def capture(self, forward: Forward) -> Forward:
        """Warm up once, record one run, return its replay."""
        forward()
        recorder = _Recorder()
        with recorder:
            output = forward()
        self.recordings += 1

        def replay() -> torch.Tensor:
            self.replays += 1
            _replay(recorder.ops)
            return output

        return replay


class RerunCapture(_Counted):
    """Runs the forward pass again at each replay (see the module docstring)."""

    def capture(self, forward: Forward) -> Forward:
        """Warm up once and return the rerun."""
        forward()
        self.recordings += 1

        def replay() -> torch.Tensor:
            self.replays += 1
            return forward()

        return replay
