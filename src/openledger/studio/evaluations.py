"""The Evaluate tab's work: an adapter against its base model on a snapshot, in the background.

Evaluation writes nothing, so a failed run leaves nothing behind; the page polls the job.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from openledger.exceptions import DataNotFoundError, OpenLedgerError
from openledger.studio.job_table import JobTable
from openledger.studio.workspace import Workspace, check_name

__all__ = ["EvaluationJob", "Evaluations"]

logger = logging.getLogger("openledger.studio")

EvaluationState = Literal["running", "done", "failed"]


@dataclass
class EvaluationJob:
    """One evaluation as the page sees it.

    Attributes:
        id: Job id.
        adapter: The adapter's name.
        datanet: The datanet evaluated on.
        snapshot_id: Its snapshot.
        state: Where the run is.
        trained_on: Whether the adapter was trained on this very snapshot (then the scores
            are not held-out ones, and the page says so).
        result: :meth:`openledger.train.EvalReport.to_dict` once done.
        error: Why it failed.
        started_at: Unix time it started.
    """

    id: str
    adapter: str
    datanet: str
    snapshot_id: int
    state: EvaluationState = "running"
    trained_on: bool = False
    result: dict[str, Any] | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON."""
        return {
            "id": self.id,
            "adapter": self.adapter,
            "datanet": self.datanet,
            "snapshot_id": self.snapshot_id,
            "state": self.state,
            "trained_on": self.trained_on,
            "result": self.result,
            "error": self.error,
        }


class Evaluations:
    """Evaluation runs of one Studio, each on its own thread."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.jobs: JobTable[EvaluationJob] = JobTable("evaluation")

    def start(
        self,
        adapter: str,
        datanet: str,
        snapshot_id: int,
        num_generate: int = 8,
        reader: str | None = None,
    ) -> EvaluationJob:
        """Start evaluating ``adapter`` on snapshot ``snapshot_id`` of ``datanet``; a
        private datanet is read with the grant of the local account called ``reader``.

        Raises:
            DataNotFoundError: No such adapter, datanet, snapshot or account.
            ConfigError: A malformed name.
            AccessDeniedError: A private datanet, and no reader or one without an approved
                access request.
        """
        from openledger.studio.access import reader_grant

        found = self.workspace.adapter(check_name(adapter, "adapter"))
        with self.workspace.open_datanet(datanet) as opened:
            if snapshot_id not in opened.snapshots():
                raise DataNotFoundError(f"datanet {datanet!r} has no snapshot {snapshot_id}")
            root = opened.snapshot_at(snapshot_id).root
            grant = reader_grant(self.workspace, opened, reader, "reads it", "read as")
        job = EvaluationJob(uuid.uuid4().hex[:12], adapter, datanet, snapshot_id)
        job.trained_on = found.manifest.snapshot_root == root
        self.jobs.add(job)
        thread = threading.Thread(
            target=self._run,
            args=(job, num_generate, grant),
            name=f"studio-eval-{job.id}",
            daemon=True,
        )
        thread.start()
        return job

    def get(self, job_id: str) -> EvaluationJob:
        """One job.

        Raises:
            DataNotFoundError: No such job.
        """
        return self.jobs.get(job_id)

    def _run(self, job: EvaluationJob, num_generate: int, grant: Any) -> None:
        from openledger.train import evaluate

        try:
            adapter = self.workspace.adapter(job.adapter)
            with self.workspace.open_datanet(job.datanet) as datanet:
                snapshot = datanet.snapshot_at(job.snapshot_id)
                report = evaluate(
                    adapter, snapshot, grant=grant, num_generate=num_generate, max_new_tokens=32
                )
            job.result = report.to_dict()
            job.state = "done"
        except OpenLedgerError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # NOTE: shown to the page as a message, logged in full
            logger.exception("evaluation %s failed", job.id)
            job.error, job.state = f"evaluation failed: {type(exc).__name__}: {exc}", "failed"
