"""The trainer callback that reports a Studio job's progress and stops it on cancel."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from openledger.studio.jobs import TrainingJob

__all__ = ["progress_callback"]


class _Progress(TrainerCallback):
    def __init__(self, job: TrainingJob, cancelled: type[Exception]) -> None:
        self.job = job
        self.cancelled = cancelled

    def _check(self) -> None:
        if self.job.cancel_event.is_set():
            raise self.cancelled

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.job.max_steps = int(state.max_steps)
        self.job.log(f"{self.job.max_steps} optimizer steps planned")
        self._check()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._check()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.job.step = int(state.global_step)
        self._check()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and math.isfinite(float(loss)):
            self.job.losses.append((int(state.global_step), float(loss)))
            self.job.log(f"step {state.global_step}: loss {float(loss):.4f}")


def progress_callback(job: TrainingJob, cancelled: type[Exception]) -> Any:
    """A ``TrainerCallback`` that fills ``job`` and raises ``cancelled`` once it is cancelled."""
    return _Progress(job, cancelled)
