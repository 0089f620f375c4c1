"""What the pytest plugin tells the terminal: fetch progress lines, offline errors and the end-of-run summary.

Both are drawn from the core's event stream, but only from the events the
plugin's own fixtures cause: a :class:`Recorder` passes an event on while a
fixture is fetching or loading (:meth:`Recorder.recording`), and drops the
rest. A suite that calls modelfix itself (modelfix's own tests do, thousands
of times) therefore gets no progress lines and no summary from the plugin,
only the suites that use its fixtures do::

    ------------------------------ modelfix ------------------------------
    models used: tiny, tiny8
    fetched: 3 files, 236.3 KB; cache hits: 1 model
    load times: tiny 0.05s ×2, tiny8 0.04s
    pool evictions: 1; cache evictions: 0 files

Under pytest-xdist each worker counts its own; :meth:`Counters.as_dict` and
:meth:`Counters.merge` carry the counts to the controller, which prints them.
A worker has no terminal: it holds its progress lines (:meth:`Progress.held`) and
sends them with the next test report, for the controller to print::

    worker                                         controller
    fixture fetches -> Progress holds the lines
    pytest_runtest_makereport: report.modelfix_lines  --xdist-->  pytest_runtest_logreport
                                                                  -> Progress.write, each line
    (lines left at the end: workeroutput["modelfix_lines"]    -->  pytest_testnodedown)
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from .events import Event

__all__ = ["Counters", "Progress", "Recorder", "OfflineNotes", "WorkerReports", "PRELOAD_LINE", "worker_output"]

PRELOAD_LINE = "modelfix: --modelfix-preload: "  # starts the line that shows a preload's error

_FETCHED_FROM = ("origin", "remote")


def worker_output(config: pytest.Config) -> dict[str, Any]:
    """What an xdist worker hands the controller when it finishes (``config.workeroutput``)."""
    return config.workeroutput  # type: ignore[attr-defined]  # pytest-xdist sets it on its workers


_COUNTS = ("fetched_files", "fetched_bytes", "cache_hits", "adopted", "pool_evictions", "cache_evictions")


class Counters:
    """What the summary reports. Plain lists, dicts and numbers: under xdist they travel to the controller."""

    def __init__(self) -> None:
        self.requested = False  # a test asked for a modelfix fixture
        self.used: list[str] = []
        self.fetched_models: set[str] = set()
        self.fetched_files = 0
        self.fetched_bytes = 0
        self.cache_hits = 0
        self.adopted = 0
        self.loads: dict[str, list[float]] = {}
        self.pool_evictions = 0
        self.cache_evictions = 0
        self._lock = threading.Lock()

    def use(self, name: str) -> None:
        with self._lock:
            if name not in self.used:
                self.used.append(name)

    def ready(self, name: str) -> None:
        """Model ``name`` is on disk for the first time in this process: a hit unless it was fetched."""
        with self._lock:
            if name not in self.fetched_models:
                self.cache_hits += 1

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.kind == "job" and event.status == "completed":
                if event.source in _FETCHED_FROM:
                    self.fetched_models.add(event.model)
                    self.fetched_files += 1
                    self.fetched_bytes += event.total
                elif event.source == "adopted":
                    self.adopted += 1
            elif event.kind == "load" and event.status == "loaded":
                self.loads.setdefault(event.model, []).append(event.seconds)
            elif event.kind == "evict" and event.source == "cache":
                self.cache_evictions += 1
            elif event.kind == "evict" and event.source == "pool":
                self.pool_evictions += 1

    @property
    def anything(self) -> bool:
        """Did this run use modelfix at all (else the summary stays silent)?"""
        return self.requested or bool(self.used or self.loads or self.fetched_files)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "used": list(self.used),
            "loads": {k: list(v) for k, v in self.loads.items()},
            **{key: getattr(self, key) for key in _COUNTS},
        }

    def merge(self, other: Mapping[str, Any]) -> None:
        with self._lock:
            self.requested |= other["requested"]
            self.used.extend(n for n in other["used"] if n not in self.used)
            for key in _COUNTS:
                setattr(self, key, getattr(self, key) + other[key])
            for name, seconds in other["loads"].items():
                self.loads.setdefault(name, []).extend(seconds)

    def lines(self) -> list[str]:
        from .eviction import format_size

        loads = ", ".join(
            f"{name} {sum(s) / len(s):.2f}s" + (f" ×{len(s)}" if len(s) > 1 else "")
            for name, s in sorted(self.loads.items())
        )
        fetched = f"{_count(self.fetched_files, 'file')}, {format_size(self.fetched_bytes)}"
        adopted = f" (+{_count(self.adopted, 'file')} adopted from other caches)" if self.adopted else ""
        hits = _count(self.cache_hits, "model") + adopted
        return [
            f"models used: {', '.join(self.used) or 'none'}",
            f"fetched: {fetched}; cache hits: {hits}",
            f"load times: {loads or 'none'}",
            f"pool evictions: {self.pool_evictions}; cache evictions: {_count(self.cache_evictions, 'file')}",
        ]


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


class Progress:
    """Fetch progress as terminal lines, written past pytest's output capture.

    Lines rather than bars: fixture setup happens mid-line of pytest's own
    progress, and events arrive from the fetcher's threads.
    """

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._started: set[tuple[str, str | None]] = set()
        self._lock = threading.Lock()
        self._held: list[str] = []  # an xdist worker's lines, for the controller to print

    def __call__(self, event: Event) -> None:
        if event.kind != "job" or event.source not in _FETCHED_FROM:
            return
        from .eviction import format_size

        key = (event.model, event.file)
        if event.status == "downloading" and key not in self._started:
            self._started.add(key)
            self.write(
                f"modelfix: fetching {event.model}: {event.file} ({format_size(event.total)}) from {event.source}"
            )
        elif event.status == "completed":
            self.write(f"modelfix: fetched {event.model}: {event.file} ({format_size(event.total)}), verified")
        elif event.status == "failed":
            self.write(f"modelfix: fetching {event.model}: {event.file} failed: {event.message}")

    def write(self, line: str) -> None:
        """Show ``line`` on the terminal now; an xdist worker holds it for the controller instead."""
        if hasattr(self._config, "workerinput"):  # its terminal writes where no one reads
            with self._lock:
                self._held.append(line)
            return
        reporter = self._config.pluginmanager.get_plugin("terminalreporter")
        capture = self._config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:  # -p no:terminal: nowhere to write
            return
        with self._lock:
            if capture is None:
                reporter.write_line(line)
                return
            # Resuming the capture sets sys.stdout/stderr to pytest's own: a doctest's spoofed output or a
            # test's redirect_stdout in force meanwhile would be dropped ("Got nothing"), so they are put back.
            streams = sys.stdout, sys.stderr
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
            sys.stdout, sys.stderr = streams

    def held(self) -> list[str]:
        """The lines held since the last call (on an xdist worker), handed over once."""
        with self._lock:
            lines, self._held = self._held, []
        return lines


class Recorder:
    """Subscribed to the event stream for the whole run; passes on only what the fixtures cause."""

    def __init__(self, config: pytest.Config) -> None:
        self.counters = Counters()
        self.progress = Progress(config)
        # Only the main thread, where fixtures run, changes it; fetcher threads only read it.
        self._active = 0

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Around a fixture's fetch or load: the events meanwhile are this run's to report."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    def __call__(self, event: Event) -> None:
        # The keep-alive reaper closes handles the fixtures loaded from a thread of its own, later.
        reaped = event.kind == "evict" and event.source == "pool" and event.model in self.counters.used
        if self._active or reaped:
            self.counters(event)
            self.progress(event)


class OfflineNotes:
    """An OfflineError in full the first time, then one line that points there.

    The core's message lists every missing model, its files and the command that fetches
    them: three lines or more, the same for every test that needs those models.
    """

    def __init__(self) -> None:
        self._first: dict[str, str] = {}  # message -> where it was shown in full

    def note(self, message: str, model: str, where: str, first: str | None = None) -> tuple[str, bool]:
        """(the report of ``message`` for ``where``, whether it is the full message).

        ``first``: where it was shown in full if this run has not seen it yet (default
        ``where``); the xdist controller passes each worker's.
        """
        first = self._first.setdefault(message, first or where)
        if first == where:
            return f"OfflineError: {message}", True
        return (
            f"OfflineError: {model} is not in the cache (offline): see {first} for its files "
            "and the command that fetches them"
        ), False

    def first(self, message: str) -> str:
        return self._first[message]


class WorkerReports:
    """Registered on the xdist controller: what the workers' test reports carry for the terminal.

    Their fetch lines are printed (a preload's error once, though each worker preloads);
    their OfflineErrors are shown in full once per run, the others pointing at that one.
    """

    def __init__(self, progress: Progress, offline: OfflineNotes) -> None:
        self._progress = progress
        self._offline = offline
        self._preloads: set[str] = set()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for line in getattr(report, "modelfix_lines", ()):
            if line.startswith(PRELOAD_LINE):
                if line in self._preloads:
                    continue
                self._preloads.add(line)
            self._progress.write(line)
        if offline := getattr(report, "modelfix_offline", None):
            message, model, first = offline
            report.longrepr = self._offline.note(message, model, report.nodeid, first)[0]
