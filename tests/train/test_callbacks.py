"""Progress bar and live plot: on only where a person watches, and gathering the right points."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from openledger.train.callbacks import LiveLossPlot, ProgressBar, in_jupyter, stderr_is_tty
from openledger.train.finetune import _ui_callbacks


def test_nothing_is_shown_when_not_in_a_terminal_or_notebook() -> None:
    # NOTE: pytest captures stderr, so this runs as a batch job would.
    assert not stderr_is_tty()
    assert not in_jupyter()
    assert _ui_callbacks(None, None) == []
    assert [type(c) for c in _ui_callbacks(True, False)] == [ProgressBar]
    assert [type(c) for c in _ui_callbacks(False, True)] == [LiveLossPlot]


def test_the_live_plot_gathers_train_and_eval_losses() -> None:
    plot = LiveLossPlot(every=1000)  # never draws here: no notebook
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    for step, logs in [
        (1, {"loss": 2.0}),
        (2, {"loss": 1.5, "eval_loss": 1.8}),
        (3, {"loss": float("nan")}),
    ]:
        state.global_step = step
        plot.on_log(None, state, None, logs=logs)
    assert plot.train == [(1, 2.0), (2, 1.5)]
    assert plot.eval == [(2, 1.8)]


def test_the_progress_bar_follows_steps_and_losses() -> None:
    bar = ProgressBar()
    state = SimpleNamespace(global_step=0, max_steps=5, is_world_process_zero=True)
    bar.on_train_begin(None, state, None)
    state.global_step = 3
    bar.on_step_end(None, state, None)
    bar.on_log(None, state, None, logs={"loss": 0.25})
    assert bar._bar.n == 3
    assert bar._bar.postfix == "loss=0.25"
    bar.on_train_end(None, state, None)
    assert bar._bar is None


def test_the_plot_figure_needs_matplotlib() -> None:
    pytest.importorskip("matplotlib")
    plot = LiveLossPlot()
    plot.train = [(1, 2.0), (2, 1.0)]
    figure = plot.figure()
    assert figure.axes[0].get_xlabel() == "step"


def test_the_plot_is_shown_as_a_png_image_whatever_the_backend() -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("IPython")
    plot = LiveLossPlot()
    plot.train = [(1, 2.0), (2, 1.0)]
    png = plot.png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    plot.draw()  # outside a kernel IPython prints a text stand-in; inside it is this PNG
    plot.train.append((3, 0.5))
    assert plot.png() != png
    # NOTE: tests/test_notebook.py checks the live plot arrives as an image in a kernel.
