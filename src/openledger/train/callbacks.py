"""Trainer callbacks: the training log, a terminal progress bar and a live plot in Jupyter.

All are ordinary ``transformers.TrainerCallback`` s, so user callbacks passed to
:func:`openledger.train.finetune` sit beside them unchanged.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from openledger.train.provenance import TRAINING_LOG_FILE, TrainingLog

__all__ = [
    "LiveLossPlot",
    "ProgressBar",
    "ProvenanceCallback",
    "in_jupyter",
    "stderr_is_tty",
]


def in_jupyter() -> bool:
    """Whether code runs in a Jupyter kernel (where a live plot can be shown)."""
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    get_ipython = getattr(shell, "get_ipython", None)
    return get_ipython is not None and type(get_ipython()).__name__ == "ZMQInteractiveShell"


def stderr_is_tty() -> bool:
    """Whether standard error is an interactive terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class ProvenanceCallback(TrainerCallback):
    """Closes a training-log step after each optimizer step and saves it with checkpoints."""

    def __init__(self, log: TrainingLog) -> None:
        self.log = log

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.log.commit(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            self.log.save(folder / TRAINING_LOG_FILE)


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps showing the latest training and eval loss."""

    def __init__(self) -> None:
        self._bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tqdm = importlib.import_module("tqdm.auto").tqdm
        if state.is_world_process_zero:
            self._bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.update(state.global_step - self._bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self._bar is not None and logs:
            shown = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "eval_loss")}
            if shown:
                self._bar.set_postfix(shown, refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LiveLossPlot(TrainerCallback):
    """Redraws a training/eval loss plot in a Jupyter output cell as training goes.

    Needs matplotlib and IPython (imported only when drawing). The points are kept in
    :attr:`train` and :attr:`eval` as ``(step, loss)`` pairs.
    """

    def __init__(self, every: int = 1) -> None:
        self.every = max(1, every)
        self.train: list[tuple[int, float]] = []
        self.eval: list[tuple[int, float]] = []
        self._handle: Any = None
        self._calls = 0

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        for key, points in (("loss", self.train), ("eval_loss", self.eval)):
            if key in logs and math.isfinite(float(logs[key])):
                points.append((state.global_step, float(logs[key])))
        self._calls += 1
        if self._calls % self.every == 0:
            self.draw()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.draw()

    def figure(self) -> Any:
        """Return a matplotlib figure of the points gathered so far."""
        figure = importlib.import_module("matplotlib.figure").Figure(figsize=(6, 3.2))
        axes = figure.subplots()
        for points, label in ((self.train, "train loss"), (self.eval, "eval loss")):
            if points:
                axes.plot(
                    *zip(*points, strict=True),
                    label=label,
                    marker="." if points is self.eval else None,
                )
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.legend(loc="upper right")
        figure.tight_layout()
        return figure

    def png(self) -> bytes:
        """Return the plot as PNG bytes (rendered with matplotlib's Agg canvas)."""
        import io

        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def draw(self) -> None:
        """Show (or update in place) the plot in the notebook output.

        The plot goes out as a PNG image, so it shows in any kernel whatever matplotlib's
        backend or ``%matplotlib`` mode is.
        """
        if not (self.train or self.eval):
            return
        ipython = importlib.import_module("IPython.display")
        image = ipython.Image(data=self.png(), format="png")
        if self._handle is None:
            self._handle = ipython.display(image, display_id=True)
        else:
            self._handle.update(image)
