"""Training in the background: one run at a time, progress for the page, clean cancels.

A run trains into ``adapters/.staging/<job id>``. Once the adapter is complete and the run
was not cancelled, it is registered in the chain's ModelRegistry and only then moved to
``adapters/<name>``, so a cancelled or failed run leaves no adapter behind, nothing
half-written in ``adapters/`` and nothing registered::

    queued -> running -> (registered) -> done
                     \\-> cancelled | failed      (staging folder removed)
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from openledger.exceptions import (
    ConfigError,
    DataNotFoundError,
    OpenLedgerError,
)
from openledger.studio.job_table import JobTable
from openledger.studio.workspace import Workspace, check_name

__all__ = ["JobState", "TrainingJob", "TrainingJobs", "TrainingRequest"]

logger = logging.getLogger("openledger.studio")

JobState = Literal["queued", "running", "done", "cancelled", "failed"]


@dataclass(frozen=True)
class TrainingRequest:
    """What to train: adapter name, data and recipe fields (``base_model`` among them)."""

    name: str
    datanet: str
    snapshot_id: int
    recipe: dict[str, Any]
    registrant: str | None = None
    """The local account that trains: it reads a private datanet with its grant and
    registers the result on the chain (None: the chain's default account; public datanets
    only)."""


@dataclass
class TrainingJob:
    """One training run as the page sees it.

    Attributes:
        id: Job id.
        request: What was asked.
        state: Where the run is.
        step: Optimizer steps done.
        max_steps: Steps planned (0 until training starts).
        losses: ``(step, loss)`` per logged step.
        logs: Lines for the log panel.
        error: Why it failed.
        adapter: The adapter's name once done.
        model: Its registration on the chain once done (``model_id``, ``registrant``,
            ``chain_id``).
        started_at: Unix time the run started.
    """

    id: str
    request: TrainingRequest
    state: JobState = "queued"
    step: int = 0
    max_steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    error: str | None = None
    adapter: str | None = None
    model: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def log(self, line: str) -> None:
        """Append a time-stamped line to the log panel."""
        self.logs.append(f"{time.strftime('%H:%M:%S')} {line}")

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON for the page (with an ETA while running)."""
        elapsed = time.time() - self.started_at
        eta = None
        if self.state == "running" and self.step and self.max_steps:
            eta = elapsed / self.step * (self.max_steps - self.step)
        return {
            "id": self.id,
            "name": self.request.name,
            "state": self.state,
            "step": self.step,
            "max_steps": self.max_steps,
            "losses": self.losses,
            "logs": self.logs[-200:],
            "error": self.error,
            "adapter": self.adapter,
            "model": self.model,
            "elapsed": elapsed,
            "eta": eta,
        }


class Cancelled(Exception):
    """Raised inside the trainer's callback to stop a cancelled run."""


class TrainingJobs:
    """Runs training jobs in a background thread, one at a time.

    Args:
        workspace: Where data is read and adapters are written.
        register: Registers a finished adapter on the chain, given the adapter and the
            registering local account (or None); returns what the job shows as ``model``.
        note: Called with the adapter's name and that registration once it is in place.
    """

    def __init__(
        self,
        workspace: Workspace,
        register: Callable[[Any, Any], dict[str, Any]],
        note: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.workspace = workspace
        self.register = register
        self.note = note
        self.jobs: JobTable[TrainingJob] = JobTable("training job")
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, request: TrainingRequest) -> TrainingJob:
        """Validate the request and start training it in the background.

        Raises:
            ConfigError: A bad or taken adapter name, or a run already going.
            RecipeError: A bad recipe field.
            DataNotFoundError: No such datanet or snapshot.
        """
        from openledger.train import LoraRecipe

        name = check_name(request.name, "adapter")
        LoraRecipe.from_dict(request.recipe)
        if request.registrant:
            self.workspace.account(request.registrant)
        with self.workspace.open_datanet(request.datanet) as datanet:
            if request.snapshot_id not in datanet.snapshots():
                raise DataNotFoundError(
                    f"datanet {request.datanet!r} has no snapshot {request.snapshot_id}"
                )
            self._grant(datanet, request)
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise ConfigError("a training run is going; wait for it or cancel it first")
            if (self.workspace.adapters_dir / name).exists():
                raise ConfigError(f"an adapter called {name!r} exists already")
            job = TrainingJob(uuid.uuid4().hex[:12], request)
            self.jobs.add(job)
            self._thread = threading.Thread(target=self._run, args=(job,), daemon=True)
            self._thread.start()
        return job

    def get(self, job_id: str) -> TrainingJob:
        """The job with id ``job_id``.

        Raises:
            DataNotFoundError: No such job.
        """
        return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> TrainingJob:
        """Ask a job to stop; it stops at its next step and leaves nothing behind."""
        job = self.get(job_id)
        if job.state in ("queued", "running"):
            job.cancel_event.set()
            job.log("cancel requested")
        return job

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running job's thread to end (for shutdown and tests)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _grant(self, datanet: Any, request: TrainingRequest) -> Any:
        """The grant a private datanet's snapshot is read with: the registrant's.

        Raises:
            AccessDeniedError: A private datanet, and no registrant or one without an
                approved access request.
        """
        from openledger.studio.access import reader_grant

        return reader_grant(
            self.workspace,
            datanet,
            request.registrant,
            "trains on it",
            "Train and register as",
        )

    def _run(self, job: TrainingJob) -> None:
        staging = self.workspace.staging_dir / job.id
        job.state = "running"
        job.log(f"training {job.request.name} on {job.request.datanet}#{job.request.snapshot_id}")
        try:
            self._train(job, staging)
        except Cancelled:
            job.state = "cancelled"
            job.log("cancelled; nothing was kept")
        except OpenLedgerError as exc:
            job.state, job.error = "failed", str(exc)
            job.log(f"failed: {exc}")
        except Exception as exc:
            logger.exception("training job %s failed", job.id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            job.log(f"failed: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _train(self, job: TrainingJob, staging: Any) -> None:
        from openledger.studio.progress import progress_callback
        from openledger.train import finetune

        with self.workspace.open_datanet(job.request.datanet) as datanet:
            snapshot = datanet.snapshot_at(job.request.snapshot_id)
            run = finetune(
                job.request.recipe,
                snapshot,
                staging,
                grant=self._grant(datanet, job.request),
                callbacks=[progress_callback(job, Cancelled)],
                progress=False,
                live_plot=False,
            )
        if job.cancel_event.is_set():
            raise Cancelled
        # NOTE: checkpoints are for resuming this run; the adapter folder needs none.
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        target = self.workspace.adapters_dir / job.request.name
        registrant = job.request.registrant
        account = self.workspace.account(registrant) if registrant else None
        with self._lock:
            if target.exists():
                raise ConfigError(f"an adapter called {job.request.name!r} appeared meanwhile")
            if job.cancel_event.is_set():
                raise Cancelled
            # NOTE: registered last of all that can fail, and before the folder is in place:
            # a cancel or an error up to here leaves nothing on chain and nothing in adapters/
            job.model = self.register(run.adapter, account)
            os.replace(staging, target)
        self.note(job.request.name, job.model)
        job.adapter = job.request.name
        job.state = "done"
        job.log(f"adapter {run.adapter.id} saved as {job.request.name}")
        job.log(f"registered on chain {job.model['chain_id']} as model {job.model['model_id']}")
