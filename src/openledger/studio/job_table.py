"""The Studio's background jobs by id (training, evaluation, attribution share it)."""

from __future__ import annotations

import threading
from typing import Generic, Protocol, TypeVar

from openledger.exceptions import DataNotFoundError

__all__ = ["JobTable"]


class _Job(Protocol):
    @property
    def id(self) -> str: ...


J = TypeVar("J", bound=_Job)


class JobTable(Generic[J]):
    """Jobs of one kind by id, read and written from several threads.

    Args:
        kind: What a job is, for the error naming a missing one (``"training job"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._jobs: dict[str, J] = {}
        self._lock = threading.Lock()

    def add(self, job: J) -> None:
        """Record ``job`` under its id."""
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: str) -> J:
        """The job with id ``job_id``.

        Raises:
            DataNotFoundError: No such job.
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise DataNotFoundError(f"no {self.kind} {job_id!r}")
        return job

    def values(self) -> list[J]:
        """Every job, oldest first."""
        with self._lock:
            return list(self._jobs.values())
