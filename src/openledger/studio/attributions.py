"""The Chat tab's "attribute this answer", in the background and cancellable.

Each attribution runs :func:`openledger.attribution.attribute` in a child process (spawned,
so it shares no state with the server), which writes nothing: it sends the report back.
The Studio then writes the answer's attribution into its ledger in one transaction. A
cancel ends the child at once, and nothing is written; a cancel that comes after the
write finds the job done::

    running -> done                      (attribution written to the ledger)
            \\-> cancelled | failed       (nothing written)
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openledger.exceptions import (
    AccessDeniedError,
    ConfigError,
    OpenLedgerError,
)
from openledger.studio.job_table import JobTable
from openledger.studio.rewards import Rewards
from openledger.studio.workspace import Workspace

__all__ = ["AttributionJob", "Attributions"]

logger = logging.getLogger("openledger.studio")

AttributionState = Literal["running", "done", "cancelled", "failed"]


@dataclass
class AttributionJob:
    """One attribution as the page sees it.

    Attributes:
        id: Job id.
        request_id: The metered answer.
        adapter: The adapter whose part of the answer is attributed.
        state: Where it is.
        method: The attribution method, once done.
        shares: ``(address, share)`` of each contributor, largest first, once done.
        error: Why it failed.
        started_at: Unix time it started.
    """

    id: str
    request_id: str
    adapter: str
    state: AttributionState = "running"
    method: str | None = None
    shares: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_dict(self, names: dict[str, str]) -> dict[str, Any]:
        """The job as JSON, contributors named after local accounts where known."""
        return {
            "id": self.id,
            "request_id": self.request_id,
            "adapter": self.adapter,
            "state": self.state,
            "method": self.method,
            "shares": [
                {"contributor": a, "name": names.get(a, ""), "share": s} for a, s in self.shares
            ],
            "error": self.error,
            "elapsed": time.time() - self.started_at,
        }


class Attributions:
    """Attribution jobs of one Studio.

    Args:
        workspace: Where adapters and datanets are.
        rewards: The ledger the attributions are written to.
    """

    def __init__(self, workspace: Workspace, rewards: Rewards) -> None:
        self.workspace = workspace
        self.rewards = rewards
        self.jobs: JobTable[AttributionJob] = JobTable("attribution")
        self._lock = threading.Lock()

    def start(self, request_id: str, adapter: str, prompt: str, completion: str) -> AttributionJob:
        """Check the answer and start attributing it in the background.

        Raises:
            DataNotFoundError: No such answer, adapter or datanet.
            ConfigError: Texts other than the metered ones, an adapter that did not answer,
                an answer settled or attributed already (or being attributed), an adapter
                not trained on a datanet snapshot.
        """
        self.rewards.check_answer(request_id, adapter, prompt, completion)
        manifest = self.workspace.adapter(adapter).manifest
        if manifest.datanet_id is None or manifest.snapshot_id is None:
            raise ConfigError(f"adapter {adapter!r} was not trained on a datanet snapshot")
        datanet = self.workspace.datanet_for(manifest.datanet_id)
        grant = self._grant(adapter, datanet)
        with self._lock:
            busy = [
                j
                for j in self.jobs.values()
                if j.state == "running" and (j.request_id, j.adapter) == (request_id, adapter)
            ]
            if busy:
                raise ConfigError(f"answer {request_id} is being attributed to {adapter!r}")
            job = AttributionJob(uuid.uuid4().hex[:12], request_id, adapter)
            self.jobs.add(job)
        work = (
            str(self.workspace.adapters_dir / adapter),
            str(self.workspace.datanets_dir / datanet),
            int(manifest.snapshot_id),
            prompt,
            completion,
            grant,
        )
        thread = threading.Thread(
            target=self._run, args=(job, manifest, work), name=f"studio-attr-{job.id}", daemon=True
        )
        thread.start()
        return job

    def _grant(self, adapter: str, datanet: str) -> str | None:
        """The grant (JSON) a private datanet's snapshot is read with: that of the local
        account that trained and registered the adapter.

        Raises:
            AccessDeniedError: The datanet is private and that account is not known here or
                has no approved access request any more.
        """
        from openledger.studio.access import grant_of

        with self.workspace.open_datanet(datanet) as opened:
            if opened.visibility != "private":
                return None
            registrant = (self.rewards.models().get(adapter) or {}).get("registrant")
            name = self.workspace.names_by_address().get(str(registrant))
            if name is None:
                raise AccessDeniedError(
                    f"datanet {datanet!r} is private and adapter {adapter!r} was not trained by "
                    "a local account here, whose grant would read it"
                )
            return str(grant_of(opened, self.workspace.account(name), name).model_dump_json())

    def get(self, job_id: str) -> AttributionJob:
        """One job.

        Raises:
            DataNotFoundError: No such job.
        """
        return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> AttributionJob:
        """Stop a running attribution; nothing of it is written."""
        job = self.get(job_id)
        job.cancel_event.set()
        return job

    def cancel_all(self) -> None:
        """Stop every running attribution (at shutdown)."""
        for job in self.jobs.values():
            job.cancel_event.set()

    def _run(self, job: AttributionJob, manifest: Any, work: tuple[Any, ...]) -> None:
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_attribute, args=(sender, *work), daemon=True)
        try:
            process.start()
            sender.close()
            while not receiver.poll(0.1):
                if job.cancel_event.is_set():
                    job.state = "cancelled"
                    return
                if not process.is_alive() and not receiver.poll(0):
                    raise ConfigError(f"the attribution process ended ({process.exitcode})")
            outcome, value = receiver.recv()
            if outcome == "error":
                job.error, job.state = str(value), "failed"
                return
            with self._lock:
                # NOTE: written in one transaction, or (cancelled meanwhile) not at all
                if job.cancel_event.is_set():
                    job.state = "cancelled"
                    return
                self.rewards.credit(job.request_id, manifest, value)
                job.method = str(value.method)
                shares = value.contributor_shares().items()
                job.shares = sorted(((str(a), float(s)) for a, s in shares), key=lambda x: -x[1])
                job.state = "done"
        except OpenLedgerError as exc:
            job.error, job.state = str(exc), "failed"
        except Exception as exc:  # NOTE: shown to the page as a message, logged in full
            logger.exception("attribution %s failed", job.id)
            job.error, job.state = f"attribution failed: {type(exc).__name__}: {exc}", "failed"
        finally:
            if process.is_alive():
                process.terminate()
            process.join(timeout=10)
            receiver.close()


def _attribute(
    sender: Any,
    adapter: str,
    datanet: str,
    snapshot_id: int,
    prompt: str,
    completion: str,
    grant_json: str | None,
) -> None:
    """The child process: attribute one answer and send back its report (or the error)."""
    from openledger.attribution import attribute
    from openledger.data import AccessGrant, Datanet

    try:
        grant = AccessGrant.model_validate_json(grant_json) if grant_json else None
        opened = Datanet.open(Path(datanet))
        try:
            snapshot = opened.snapshot_at(snapshot_id)
            report = attribute(adapter, snapshot, prompt=prompt, completion=completion, grant=grant)
        finally:
            opened.close()
        sender.send(("ok", report))
    except OpenLedgerError as exc:
        sender.send(("error", str(exc)))
    except Exception as exc:
        sender.send(("error", f"attribution failed: {type(exc).__name__}: {exc}"))
    finally:
        sender.close()
