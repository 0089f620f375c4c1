"""One stream of progress events, many reporters.

The core emits :class:`Event` objects (a file fetch changing status or
advancing, a model loading, a handle or a cached file evicted); each front end subscribes its own reporter: tqdm
bars in a terminal, ipywidgets in a notebook, counters in the pytest summary,
log lines elsewhere. The core never knows which are listening.

What each kind of event carries::

    kind   status                                    also set
    job    queued -> downloading -> verifying ->     file; done/total (bytes); source: "cache",
           completed, or failed / cancelled          "adopted", "remote" or "origin"; message:
           (the order: see modelfix.jobs)            the error, if failed
    load   loading -> loaded, or failed              file (the model file); seconds, once loaded;
                                                     message: the error, if failed
    evict  (none)                                    file; source "cache" when the store deleted
                                                     it (model: the models whose view showed it),
                                                     "pool" when the pool closed a handle
                                                     (message: why; total: its estimated bytes)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Event", "EventStream", "events", "JOB_STATUSES"]

JOB_STATUSES = ("queued", "downloading", "verifying", "completed", "failed", "cancelled")
log = logging.getLogger("modelfix")


@dataclass(frozen=True)
class Event:
    """Something happened to one file of one model (or to the model's handle); see the table above."""

    kind: str
    model: str
    file: str | None = None
    status: str = ""
    done: int = 0
    total: int = 0
    source: str = ""
    seconds: float = 0.0
    message: str = ""


Listener = Callable[[Event], None]


class EventStream:
    """Thread-safe fan-out of events to subscribers."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a broken progress bar must never break a download
                log.debug("event listener failed", exc_info=True)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    @contextmanager
    def listening(self, listener: Listener) -> Iterator[None]:
        unsubscribe = self.subscribe(listener)
        try:
            yield
        finally:
            unsubscribe()


# Process-wide: the core emits into one stream; each front end subscribes its reporter to it.
events = EventStream()
