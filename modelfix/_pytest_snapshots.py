"""Snapshot tests in pytest: the ``model_snapshot`` fixture, its options, the summary line, xdist.

The plugin module loads this one (its ``pytest_plugins``); what a snapshot is,
its file and the explanation of a mismatch are the core's (:mod:`modelfix.snapshots`)::

    model_snapshot  (function)   ModelSnapshot: ``assert model_snapshot == value`` (a str, or a
                                 JSON-able dict or list); a test's comparisons are matched in call
                                 order; the model, its pin and settings are the llama fixture's
    --modelfix-snapshot-update   write new and changed snapshots, remove the unused ones
    --modelfix-snapshot-runtime  any (compare whatever runtime recorded it) | same (skip a
                                 comparison recorded on another runtime or backend)
    summary line                 snapshots: 3 passed, 1 written, 0 updated, 1 failed, 0 unused

A mismatch raises :class:`~modelfix.snapshots.SnapshotMismatch` (an AssertionError) from the
comparison itself, with the whole explanation: pytest's assertion rewriting would cut an
explanation to eight lines, and plain asserts in helper modules would get none.

Under pytest-xdist the tests of one module may run on several workers, each writing its own
entries into the module's one file (the core's lock and per-entry merge keep them all)::

    worker (or the only process)                        controller
    fixture: compare, count; with update, write the
      test's entries when it ends
    pytest_itemcollected: each module's tests
    pytest_runtest_logreport: tests that passed, with
      how many comparisons they made
    sessionfinish: workeroutput["modelfix_snapshots"]  -->  pytest_testnodedown: merge
                                                            sessionfinish: find the unused
                                                            entries; with update, remove them
                                                            terminal summary: the line

*Unused* entries are those known to be unused: their test no longer exists in its module
(known only when the module was collected whole: not narrowed to test ids on the command line,
not under ``--lf``, which collects only the last failures, not in a run that was interrupted),
or their test passed in this run and made fewer comparisons than the entry's index. Entries of
tests that were deselected (``-k``, ``-m``), skipped, failed or did not run are kept, so a
partial run with ``--modelfix-snapshot-update`` never loses a recording.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._pytest_report import worker_output
from .errors import SnapshotError
from .snapshot_file import RECORD_HINT, Snapshot, SnapshotFile, Value, parse_key, snapshot_key, snapshot_path

if TYPE_CHECKING:
    from .config import CacheSettings
    from .handle import PooledLlama
    from .lockfile import Entry
    from .pytest_plugin import ModelfixSession
    from .snapshots import Recording

__all__ = ["ModelSnapshot", "SnapshotRun", "model_snapshot"]

_OUTCOMES = ("passed", "written", "updated", "failed", "skipped")
_RUNTIMES = ("any", "same")
# A run that ended so may have collected part of a module: nothing is known unused.
_BROKEN_OFF = (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("modelfix", "modelfix: pinned llama.cpp models")
    update = "model_snapshot: write new and changed snapshots, and remove those no test uses any more"
    group.addoption(
        "--modelfix-snapshot-update", dest="modelfix_snapshot_update", action="store_true", default=None, help=update
    )
    parser.addini("modelfix_snapshot_update", f"{update} (--modelfix-snapshot-update)", type="bool", default=None)
    runtime = (
        "model_snapshot: a recording made on another runtime or backend is compared as usual (any, the default) "
        "or skipped (same)"
    )
    group.addoption(
        "--modelfix-snapshot-runtime", dest="modelfix_snapshot_runtime", choices=_RUNTIMES, default=None, help=runtime
    )
    parser.addini("modelfix_snapshot_runtime", f"{runtime} (--modelfix-snapshot-runtime)", type="string", default=None)


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"modelfix_{name}")
    return config.getini(f"modelfix_{name}") if value is None else value


class SnapshotRun:
    """This process's side of the run (a plugin object): options, counts, the files read, the entries to write."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.update = bool(_option(config, "snapshot_update"))
        runtime = (_option(config, "snapshot_runtime") or "any").strip().lower()
        if runtime not in _RUNTIMES:
            raise pytest.UsageError(f"modelfix_snapshot_runtime: expected any or same, got {runtime!r}")
        self.same_runtime = runtime == "same"
        self.counts = dict.fromkeys(_OUTCOMES, 0)
        self.unused: list[tuple[str, str]] = []  # (file, key)
        self.problems: list[str] = []
        self.modules: dict[str, set[str]] = {}  # module with a snapshot file -> its tests' names
        self.finished: dict[str, dict[str, int]] = {}  # module -> test that passed -> its comparisons
        self.calls: dict[str, int] = {}  # node id -> comparisons so far
        self._where: dict[str, tuple[str, str]] = {}  # node id -> (module, name), tracked tests only
        self._untracked: set[str] = set()  # modules without a snapshot file when collected
        self._read: dict[Path, dict[str, Snapshot]] = {}
        self._staged: dict[Path, dict[str, Snapshot]] = {}
        self._narrowed = {
            str((config.invocation_params.dir / arg.split("::")[0]).resolve()) for arg in config.args if "::" in arg
        }
        # --lf leaves a module's passing tests out of its collection: none of its modules is whole.
        self._whole = not config.getoption("lf", False)

    # --- in the process that runs the tests ---

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        if not isinstance(item, pytest.Function) or "::" not in item.nodeid:
            return
        module = str(item.path)
        if module not in self.modules:
            if module in self._untracked or not snapshot_path(item.path).exists():
                self._untracked.add(module)  # nothing recorded there can be unused
                return
            self.modules[module] = set()
        name = item.nodeid.split("::", 1)[1]
        self.modules[module].add(name)
        self._where[item.nodeid] = (module, name)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        where = self._where.get(report.nodeid)
        if where is not None and report.when == "call" and report.passed:
            module, name = where
            self.finished.setdefault(module, {})[name] = self.calls.get(report.nodeid, 0)

    def recorded(self, file: Path, key: str) -> Snapshot | None:
        if file not in self._read:
            self._read[file] = SnapshotFile(file).read()
        return self._read[file].get(key)

    def stage(self, file: Path, key: str, snap: Snapshot) -> None:
        self._staged.setdefault(file, {})[key] = snap

    def flush(self) -> None:
        """Write the staged entries (each file under its lock, merged with what other workers wrote)."""
        staged, self._staged = self._staged, {}
        for file, changes in staged.items():
            SnapshotFile(file).write(changes)
            self._read.setdefault(file, {}).update(changes)

    def shown(self, file: Path) -> str:
        return os.path.relpath(file, self.config.rootpath)

    # --- xdist ---

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "modules": {module: sorted(names) for module, names in self.modules.items()},
            "narrowed": sorted(self._narrowed),
            "whole": self._whole,
            "finished": self.finished,
        }

    def merge(self, other: dict[str, Any]) -> None:
        for outcome, n in other["counts"].items():
            self.counts[outcome] = self.counts.get(outcome, 0) + n
        for module, names in other["modules"].items():
            self.modules.setdefault(module, set()).update(names)
        self._narrowed.update(other["narrowed"])
        self._whole &= other["whole"]
        for module, tests in other["finished"].items():
            self.finished.setdefault(module, {}).update(tests)

    # --- at the end, in the controller or the only process ---

    def sweep(self) -> None:
        """Find the entries known to be unused (see the module docstring); with update, remove them."""
        for module, names in sorted(self.modules.items()):
            file = snapshot_path(Path(module))
            whole = self._whole and str(Path(module).resolve()) not in self._narrowed
            finished = self.finished.get(module, {})
            try:
                gone = [key for key in SnapshotFile(file).read() if _unused(key, names, finished, whole)]
                if gone and self.update:
                    SnapshotFile(file).write(dict.fromkeys(gone))
            except SnapshotError as exc:  # the tests that read the file said it; a write is said here
                self.problems.append(f"modelfix: unused snapshots were not removed: {exc}")
                continue
            self.unused += [(self.shown(file), key) for key in gone]

    # --- hooks of the end of the run ---

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.flush()
        if hasattr(session.config, "workerinput"):
            worker_output(session.config)["modelfix_snapshots"] = self.as_dict()
        elif not session.config.option.collectonly and exitstatus not in _BROKEN_OFF:
            self.sweep()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if (data := getattr(node, "workeroutput", {}).get("modelfix_snapshots")) is not None:
            self.merge(data)

    @pytest.hookimpl(trylast=True)  # after the plugin's own lines, in its section
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from .pytest_plugin import _session

        line = self.summary()
        if line is None and not self.problems:
            return
        state = _session(self.config)
        if not state.stats.anything and not state.crashes:  # the plugin wrote no section
            terminalreporter.write_sep("-", "modelfix")
        for text in [*([line] if line else []), *self.problems]:
            terminalreporter.write_line(text)
        if self.config.option.verbose > 0:
            for file, key in self.unused:
                terminalreporter.write_line(f"  unused: {file}: {key}")

    def summary(self) -> str | None:
        if not any(self.counts.values()) and not self.unused:
            return None
        c = self.counts
        line = (
            f"snapshots: {c['passed']} passed, {c['written']} written, {c['updated']} updated, "
            f"{c['failed']} failed, {len(self.unused)} unused"
        )
        if self.unused:
            line += " (removed)" if self.update else " (--modelfix-snapshot-update removes them)"
        if c["skipped"]:
            line += f"; {c['skipped']} skipped (recorded on another runtime)"
        return line


def _unused(key: str, names: set[str], finished: dict[str, int], whole: bool) -> bool:
    """Is entry ``key`` known to be unused: its test passed with fewer comparisons, or is gone from a whole module?"""
    name, index = parse_key(key)
    return index >= finished[name] if name in finished else whole and name not in names


_RUN = pytest.StashKey[SnapshotRun]()


class ModelSnapshot:
    """What the ``model_snapshot`` fixture gives a test: ``assert model_snapshot == value``.

    Each comparison is matched with the test's recording of the same index (the first
    comparison with the first recording...). It is True when they match, or when
    ``--modelfix-snapshot-update`` records the value; a missing or different recording
    raises :class:`~modelfix.snapshots.SnapshotMismatch` saying what changed and how.
    ``assert_match(value)`` does the same, for code outside pytest's assertion rewriting.
    """

    __hash__ = None  # type: ignore[assignment]  # compared with ==, so not hashable (as a dataclass with eq)

    def __init__(
        self, run: SnapshotRun, item: pytest.Item, llama: PooledLlama, entry: Entry, cache: CacheSettings
    ) -> None:
        self._run = run
        self._nodeid = item.nodeid
        self._name = item.nodeid.split("::", 1)[1]
        self._file = snapshot_path(item.path)
        self._llama = llama
        self._entry = entry
        self._cache = cache
        self._recording: Recording | None = None
        self._index = 0

    def __eq__(self, other: object) -> bool:
        __tracebackhide__ = True
        return self.assert_match(other)

    def assert_match(self, value: Any) -> bool:
        __tracebackhide__ = True
        from .snapshots import SnapshotMismatch, judge, mismatch_message, runtime_changes

        run, index = self._run, self._index
        self._index += 1
        run.calls[self._nodeid] = self._index
        key = snapshot_key(self._name, index)
        now = Snapshot(Value.of(value), self._recording_now())
        recorded = run.recorded(self._file, key)
        where = f"snapshot {key!r} in {run.shown(self._file)}"
        if run.same_runtime and recorded is not None and recorded.recording.runtime != now.recording.runtime:
            run.counts["skipped"] += 1
            changes = "; ".join(runtime_changes(recorded.recording.runtime, now.recording.runtime))
            pytest.skip(
                f"{where} was recorded on another runtime ({changes}): --modelfix-snapshot-runtime=same skips it"
            )
        outcome = judge(recorded, now, update=run.update)
        run.counts["failed" if outcome == "missing" else outcome] += 1
        if outcome in ("written", "updated"):
            run.stage(self._file, key, now)
        elif outcome == "missing":
            raise SnapshotMismatch(
                f"{self._nodeid}: no snapshot of comparison {index + 1} ({key!r} in {run.shown(self._file)}). "
                f"Record it with {RECORD_HINT}."
            )
        elif outcome == "failed":
            assert recorded is not None
            fix = f"If the new output is right, record it with {RECORD_HINT}."
            raise SnapshotMismatch(mismatch_message(where, recorded, now, fix))
        return True

    def _recording_now(self) -> Recording:
        if self._recording is None:
            from .pool import record
            from .settings import repeatable_seed
            from .snapshots import recording_of

            seed = repeatable_seed(record(self._llama).settings.seed)  # as the llama fixture reset it
            self._recording = recording_of(self._llama, self._entry, self._cache, seed=seed)
        return self._recording

    def __repr__(self) -> str:
        return f"<model_snapshot of {self._nodeid}>"


@pytest.fixture
def model_snapshot(
    request: pytest.FixtureRequest, llama: PooledLlama, modelfix_model: str, modelfix: ModelfixSession
) -> Iterator[ModelSnapshot]:
    """``assert model_snapshot == value``: the value against its recording beside the test module."""
    run = request.config.stash[_RUN]
    project = modelfix.project
    yield ModelSnapshot(run, request.node, llama, project.lockfile.entry(modelfix_model), project.cache_settings)
    run.flush()


def pytest_configure(config: pytest.Config) -> None:
    run = SnapshotRun(config)
    config.stash[_RUN] = run
    config.pluginmanager.register(run, "modelfix-snapshots")
