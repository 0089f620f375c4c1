"""Under pytest-xdist, which model a worker was loading or using when it went down.

A llama.cpp crash (a SIGSEGV in a kernel, an abort) kills a worker with no
Python left to report it; xdist then says only which test was running. So each
worker keeps one small file saying what it is doing with which model, and the
controller reads it when a worker goes down with an error::

    controller: pytest_configure   mkdtemp modelfix-xdist-*/   (handed to workers in workerinput)
    worker gw1:  fixture loads "chat"     gw1.json {"test": ..., "loading": "chat", "using": []}
                 load done                gw1.json {"test": ..., "loading": null, "using": ["chat"]}
                 test finished            gw1.json removed
    controller: pytest_testnodedown(gw1, error)  → "worker gw1 went down ... using model 'chat' ..."

Each write replaces the file whole (a temporary file renamed over it), so the
controller never reads half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["Breadcrumbs", "crash_report"]


class Breadcrumbs:
    """A worker's notes on its models; does nothing outside an xdist worker (``folder`` None)."""

    def __init__(self, folder: str | None, worker: str | None) -> None:
        self._path = Path(folder) / f"{worker}.json" if folder and worker else None
        self.test: str | None = None
        self._using: list[str] = []

    def loading(self, name: str) -> None:
        self._write(loading=name)

    def using(self, name: str) -> None:
        if name not in self._using:
            self._using.append(name)
        self._write(loading=None)

    def test_started(self, nodeid: str) -> None:
        self.test, self._using = nodeid, []

    def test_finished(self) -> None:
        self.test, self._using = None, []
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()

    def _write(self, *, loading: str | None) -> None:
        if self._path is None:
            return
        data = {"test": self.test, "loading": loading, "using": self._using, "pid": os.getpid()}
        try:
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.stem}-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self._path)
        except OSError:
            pass  # a note for a crash report must never fail a test


def read(folder: str | Path, worker: str) -> dict[str, Any] | None:
    try:
        return json.loads((Path(folder) / f"{worker}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def crash_report(folder: str | Path | None, worker: str, sources: dict[str, str]) -> str | None:
    """The controller's line for worker ``worker`` that went down, if it was busy with a model."""
    crumb = read(folder, worker) if folder else None
    if not crumb or not (crumb.get("loading") or crumb.get("using")):
        return None

    def named(name: str) -> str:
        return f"{name!r} ({sources[name]})" if name in sources else repr(name)

    doing = []
    if crumb.get("loading"):
        doing.append(f"loading model {named(crumb['loading'])}")
    if crumb.get("using"):
        doing.append("using model" + ("s " if len(crumb["using"]) > 1 else " ") + ", ".join(map(named, crumb["using"])))
    test = f" in {crumb['test']}" if crumb.get("test") else ""
    return (
        f"worker {worker} went down while {' and '.join(doing)}{test}: llama.cpp may have crashed. "
        f"Run `modelfix doctor` and add its output to a bug report."
    )
