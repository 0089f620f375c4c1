"""Fetch jobs: what each file being made available is doing, as a list and as events.

One :class:`Job` per pinned file a ``sync`` (or ``path``/``files``) needs.
Its status moves along::

    queued ─┬───────────────────────────────> completed   in the store already (source "cache")
            ├─> verifying ──────────────────> completed   another cache's copy (source "adopted")
            └─> downloading ─> verifying ───> completed   fetched (source "remote" or "origin")

A try that fails (a candidate with other bytes, a remote without a good copy,
a corrupt download) moves on to the next one, back to ``downloading``. Until
it completes, a job may end ``failed`` or ``cancelled`` instead.

Each change, and its progress (five times a second at most), goes out
as a ``kind="job"`` :class:`~modelfix.events.Event`; :func:`jobs` gives
snapshots of the last few hundred jobs to anyone polling instead.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import redact
from .events import JOB_STATUSES, Event, events

__all__ = ["Job", "new_job", "jobs"]

_PROGRESS_EVERY = 0.2  # seconds between progress events of one job


@dataclass
class Job:
    """One file being made available; a snapshot of it is what :func:`jobs` returns."""

    model: str
    file: str
    size: int
    status: str = "queued"
    done: int = 0
    source: str = ""
    error: str = ""
    _emitted: float = field(default=0.0, repr=False, compare=False)

    def update(self, status: str | None = None, *, source: str | None = None, error: str | None = None) -> None:
        """Move to ``status`` (one of :data:`~modelfix.events.JOB_STATUSES`) and tell the listeners."""
        if status is not None and status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        with _JOBS_LOCK:
            if status is not None:
                self.status = status
            if source is not None:
                self.source = source
            if error is not None:
                self.error = redact(error)
            if status == "completed":
                self.done = self.size
        self._emit()

    def advance(self, n: int, *, to: int | None = None) -> None:
        """Count ``n`` more bytes done (or set the count ``to`` a value, after a resume)."""
        now = time.monotonic()
        with _JOBS_LOCK:
            self.done = min(self.size, max(0, to if to is not None else self.done + n))
            due = now - self._emitted >= _PROGRESS_EVERY or self.done >= self.size
            if due:
                self._emitted = now
        if due:
            self._emit()

    def _emit(self) -> None:
        with _JOBS_LOCK:
            event = Event(
                kind="job",
                model=self.model,
                file=self.file,
                status=self.status,
                done=self.done,
                total=self.size,
                source=self.source,
                message=self.error,
            )
        events.emit(event)  # outside the lock: a slow listener must not stall other jobs


# Process-wide, as the fetches they describe: anyone in the process may poll jobs().
_JOBS_LOCK = threading.RLock()
_JOBS: deque[Job] = deque(maxlen=512)


def new_job(model: str, file: str, size: int) -> Job:
    """Register a queued job for ``file`` of ``model`` and announce it."""
    job = Job(model, file, size)
    with _JOBS_LOCK:
        _JOBS.append(job)
    job.update("queued")
    return job


def jobs() -> list[Job]:
    """Snapshots of the current and most recent jobs, oldest first (safe from any thread)."""
    with _JOBS_LOCK:
        return [dataclasses.replace(j) for j in _JOBS]
