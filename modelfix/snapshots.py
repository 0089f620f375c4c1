"""Snapshots of model outputs: a recorded value, with the pin, settings and runtime that produced it.

A snapshot test records what a model answered once and compares every later
answer with it. When they differ, the record says what changed since: the
model's pin, the llama.cpp runtime, a load setting, or nothing (then the
settings are not deterministic). This module is the core of it, shared by the
pytest fixture ``model_snapshot`` (:mod:`modelfix._pytest_snapshots`) and the
notebook helper :func:`snapshot`; it imports no front end::

    Value.of(obj)                 str -> text; JSON-able dict/list -> JSON (sorted keys, indented)
    recording_of(handle, entry)   Recording: model, Pin (source, revision, sha256 per file),
                                  the settings that affect outputs, Runtime
    judge(recorded, now, update)  "passed" | "written" | "updated" | "missing" | "failed"
    explain(old, new)             what changed between two recordings, one line per change
    mismatch_message(...)         the failure: what changed, then recorded vs now as a diff
    snapshot(name_or_path)        the notebook helper: record or compare a value from a cell

The file format lives in :mod:`modelfix.snapshot_file`.

*Settings that affect outputs* (:data:`OUTPUT_SETTINGS`) are the load settings
that change what llama.cpp computes: context and batch sizes, threads, seed,
RoPE, flash attention, chat format, embedding mode, mmproj. Where the weights
run is the machine's business, not a setting: ``n_gpu_layers``, ``main_gpu``,
``tensor_split`` and ``offload_kqv`` are summed up by the runtime's *backend*
(CPU, CUDA, Metal, ...), and ``use_mmap``, ``use_mlock``, ``verbose`` change
nothing computed. Weight repacking (``repack``) is recorded as the runtime's
effective ``on``/``off``, as the backend probe decided it for ``auto``.

The *runtime* is llama-cpp-python's version, llama.cpp's build info
(``llama_print_system_info()``: the backends and the CPU features it uses
here, e.g. AVX2 or AVX-512), the backend and the repacking: outputs of one
model can differ between any two of these.

Values from llama-cpp-python's responses (completions, chat completions,
their chunks, embeddings) are recorded without their ``id``, ``created`` and
``model`` (the file's path) keys, which differ on every call or machine.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SnapshotError, SnapshotMismatch
from .lockfile import content_key
from .snapshot_file import (
    OUTPUT_SETTINGS,
    SNAPSHOT_DIR,
    SUFFIX,
    Pin,
    Recording,
    Runtime,
    Snapshot,
    SnapshotFile,
    Value,
    parse_key,
    snapshot_key,
    snapshot_path,
)

if TYPE_CHECKING:
    from .config import CacheSettings
    from .lockfile import Entry, Lockfile
    from .project import Project
    from .settings import LoadSettings

__all__ = [
    "OUTPUT_SETTINGS",
    "Value",
    "Pin",
    "Runtime",
    "Recording",
    "Snapshot",
    "SnapshotMismatch",
    "SnapshotFile",
    "Snapshots",
    "snapshot",
    "snapshot_path",
    "snapshot_key",
    "parse_key",
    "recording_of",
    "runtime_of",
    "backend_name",
    "judge",
    "explain",
    "runtime_changes",
    "mismatch_message",
]

_HASH = 12  # sha256 and revision characters shown in a message


def recording_of(handle: Any, entry: Entry, cache: CacheSettings, *, seed: int | None = None) -> Recording:
    """The recording of what ``handle`` (a pool handle of ``entry``'s model) computes now.

    ``cache`` is where the handle's project keeps the backend probe's verdict (for the
    runtime's repacking); ``seed`` is the seed the caller reset the handle to, where it
    differs from the handle's setting (the pytest fixtures turn "random" into 0).
    """
    resident = _resident(handle)
    if resident.content_key != content_key(entry):
        raise SnapshotError(
            f"the handle of model {resident.name!r} was loaded from other pins than {entry.name!r} has in "
            "this lockfile: name the lockfile it came from (modelfix.snapshot(..., lock=PATH)), or load it again."
        )
    settings = resident.settings if seed is None else dataclasses.replace(resident.settings, seed=seed)
    pin = Pin(entry.source, entry.revision, tuple((f.path, f.sha256) for f in entry.files))
    chosen = tuple((name, getattr(settings, name)) for name in OUTPUT_SETTINGS)
    return Recording(entry.name, pin, tuple((k, v) for k, v in chosen if v is not None), runtime_of(settings, cache))


def _resident(handle: Any) -> Any:
    """The pool's record of ``handle``; a SnapshotError for anything but a modelfix handle."""
    from .handle import PooledLlama
    from .pool import record

    if type(handle) is not PooledLlama:
        raise SnapshotError(
            f"a snapshot records a modelfix handle (from modelfix.load, %load_model or the llama fixture), "
            f"not a {type(handle).__name__}: without one there is no pin to record."
        )
    return record(handle)


@functools.cache
def _system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def runtime_of(settings: LoadSettings, cache: CacheSettings) -> Runtime:
    """This process's runtime for a handle with these settings (the backend follows its GPU layers),
    the repacking as the backend probe's verdict in ``cache`` (or its read-only caches) decides."""
    import llama_cpp

    from .probe import use_repack

    offload = settings.n_gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())
    # After a load the backend probe's verdict is in memory: no probe runs here.
    repack = "on" if use_repack(settings.repack, cache.root, cache.layers) else "off"
    return Runtime(llama_cpp.__version__, backend_name(_system_info(), offload=offload), repack, _system_info())


def backend_name(system_info: str, *, offload: bool) -> str:
    """``CPU`` unless the handle offloads layers; then the GPU backend that llama.cpp's build info names.

    The build info lists each backend with its features (``CUDA : ARCHS = 890 | ... | CPU : SSE3 = 1 | ...``);
    a Metal build may list none but the CPU's.
    """
    if not offload:
        return "CPU"
    names = [section.rpartition("|")[2].strip() for section in system_info.split(" : ")[:-1]]
    gpu = [name for name in names if name and name.upper() not in ("CPU", "BLAS", "RPC")]
    if gpu:
        return gpu[0]
    return "Metal" if sys.platform == "darwin" else "GPU"


# --- comparing -----------------------------------------------------------------------------


def judge(recorded: Snapshot | None, now: Snapshot, *, update: bool) -> str:
    """The outcome of comparing ``now`` with ``recorded``: what to count, write or report.

    ``written`` and ``updated`` are to be written. With ``update`` a matching value whose
    recording differs (a new pin or runtime that answers the same) is rewritten too, so that
    a later mismatch is explained against what last produced it.
    """
    if recorded is None:
        return "written" if update else "missing"
    if recorded.value == now.value:
        return "updated" if update and recorded.recording != now.recording else "passed"
    return "updated" if update else "failed"


def explain(old: Recording, new: Recording) -> list[str]:
    """What changed from the recording ``old`` to ``new``, one line per change (none: nothing did)."""
    lines = [f"model: {old.model} -> {new.model}"] if old.model != new.model else []
    lines += _pin_changes(old.pin, new.pin)
    lines += [f"runtime: {line}" for line in runtime_changes(old.runtime, new.runtime)]
    before, after = dict(old.settings), dict(new.settings)
    for name in sorted(before.keys() | after.keys(), key=_setting_order):
        if before.get(name) != after.get(name):
            lines.append(f"setting {name}: {_shown(name, before.get(name))} -> {_shown(name, after.get(name))}")
    return lines


def _pin_changes(old: Pin, new: Pin) -> list[str]:
    lines = [f"model pin: source {old.source} -> {new.source}"] if old.source != new.source else []
    before, after = dict(old.files), dict(new.files)
    for path, sha in new.files:
        if path not in before:
            lines.append(f"model pin: {path} added (sha256 {sha[:_HASH]}…)")
        elif before[path] != sha:
            lines.append(f"model pin: {path} sha256 {before[path][:_HASH]}… -> {sha[:_HASH]}…")
    lines += [
        f"model pin: {path} (sha256 {sha[:_HASH]}…) no longer pinned" for path, sha in old.files if path not in after
    ]
    if old.revision != new.revision:
        same = "" if lines else " (the same files)"
        lines.append(f"model pin: revision {_short(old.revision)} -> {_short(new.revision)}{same}")
    return lines


def runtime_changes(old: Runtime, new: Runtime) -> list[str]:
    """What differs from runtime ``old`` to ``new``, one item per part (none: the same runtime)."""
    lines = []
    if old.llama_cpp_python != new.llama_cpp_python:
        lines.append(f"llama-cpp-python {old.llama_cpp_python} -> {new.llama_cpp_python}")
    if old.build != new.build:
        before, after = _features(old.build), _features(new.build)
        changed = [
            f"{name} {before.get(name, '(none)')} -> {after.get(name, '(none)')}"
            for name in [*before, *(n for n in after if n not in before)]
            if before.get(name) != after.get(name)
        ]
        if not changed:
            changed = [f"{old.build!r} -> {new.build!r}"]
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        lines.append(f"llama.cpp build: {'; '.join(changed[:6])}{more}")
    if old.backend != new.backend:
        lines.append(f"backend {old.backend} -> {new.backend}")
    if old.repack != new.repack:
        lines.append(f"weight repacking {old.repack} -> {new.repack}")
    return lines


def _features(build: str) -> dict[str, str]:
    """``CPU : SSE3 = 1 | AVX2 = 1 | ...`` as {"CPU SSE3": "1", "CPU AVX2": "1", ...}."""
    found, section = {}, ""
    for item in (p.strip() for p in build.split("|")):
        part = item
        if " : " in item:
            section, _, part = item.partition(" : ")
        if part:
            name, _, value = part.partition(" = ")
            found[f"{section} {name}".strip()] = value
    return found


def _setting_order(name: str) -> tuple[int, str]:
    return (OUTPUT_SETTINGS.index(name) if name in OUTPUT_SETTINGS else len(OUTPUT_SETTINGS), name)


def _shown(name: str, value: Any) -> str:
    from .settings import LLAMA_DEFAULT_SEED

    if value is None:
        return "unset"
    if name == "seed" and value in (LLAMA_DEFAULT_SEED, -1):
        return f"{value} (random)"
    return str(value)


def _short(revision: str | None) -> str:
    return revision[:_HASH] if revision else "(none)"


def mismatch_message(where: str, recorded: Snapshot, now: Snapshot, fix: str) -> str:
    """The failure of a mismatch at ``where``: what changed since the recording, the diff, then ``fix``."""
    changes = explain(recorded.recording, now.recording)
    lines = [f"{where} is not what model {now.recording.model!r} answers now."]
    if changes:
        lines += ["What changed since the recording:", *(f"  {line}" for line in changes)]
    else:
        lines += _not_deterministic(now.recording)
    lines += _diff(recorded.value, now.value)
    lines.append(fix)
    return "\n".join(lines)


def _not_deterministic(recording: Recording) -> list[str]:
    settings = dict(recording.settings)
    threads = settings.get("n_threads")
    return [
        "Nothing modelfix records changed since the recording (model pin, runtime, load settings).",
        (
            "If the test's own inputs (prompt, max_tokens, temperature) did not change either, this output is not "
            "deterministic with these settings: a temperature above 0 samples with the seed "
            f"(seed = {_shown('seed', settings.get('seed'))}), and llama.cpp's arithmetic can vary with the "
            f"threads (n_threads = {'all cores' if threads is None else threads}) and the batch size "
            f"(n_batch = {settings.get('n_batch')})."
        ),
    ]


def _diff(recorded: Value, now: Value) -> list[str]:
    old, new = recorded.text.splitlines(), now.text.splitlines()
    if recorded.kind != now.kind:
        kinds = {"text": "a str", "json": "JSON data"}
        return [f"recorded {kinds[recorded.kind]}, now {kinds[now.kind]}:", "--- recorded", *old, "+++ now", *new]
    if old == new:  # only line ends or a trailing newline differ: show them
        return [f"recorded: {recorded.text!r}", f"now:      {now.text!r}"]
    if len(old) == 1 and len(new) == 1:
        body = [line.rstrip("\n") for line in difflib.ndiff(old, new)]
    else:
        body = list(difflib.unified_diff(old, new, lineterm="", n=3))[2:]
    return ["--- recorded", "+++ now", *body]


# --- the notebook helper -------------------------------------------------------------------


class Snapshots:
    """Record or compare values from notebook cells against one snapshot file.

    ``check(name, llm, value)`` records ``value`` under ``name`` the first time, and
    compares it with the recording afterwards: it returns ``"written"``, ``"passed"``
    or (with ``update=True``) ``"updated"``, and raises :class:`SnapshotMismatch` with
    what changed and the diff when the value differs. The file has the format that
    ``pytest --modelfix-snapshot-update`` writes.
    """

    def __init__(self, path: Path, project: Project) -> None:
        self.file = SnapshotFile(path)
        self._project = project

    @property
    def path(self) -> Path:
        return self.file.path

    def check(self, name: str, llm: Any, value: Any, *, update: bool = False) -> str:
        """Record ``value`` as ``name`` (what ``llm`` answered), or compare it with the recording."""
        entry = self._project.lockfile.entry(_resident(llm).name)
        now = Snapshot(Value.of(value), recording_of(llm, entry, self._project.cache_settings))
        recorded = self.file.read().get(name)
        outcome = judge(recorded, now, update=update or recorded is None)
        if outcome == "failed":
            assert recorded is not None
            fix = f"Accept the new value with .check({name!r}, llm, value, update=True)."
            raise SnapshotMismatch(mismatch_message(f"snapshot {name!r} in {self.path}", recorded, now, fix))
        if outcome != "passed":
            self.file.write({name: now})
        return outcome

    def __getitem__(self, name: str) -> Any:
        """The value recorded as ``name``."""
        recorded = self.file.read().get(name)
        if recorded is None:
            raise KeyError(f"{self.path} has no snapshot {name!r}")
        return recorded.value.data

    def __repr__(self) -> str:
        return f"<modelfix snapshots {self.path}>"  # a repr never reads: the file may be mid-merge-conflict


def snapshot(
    name_or_path: str | os.PathLike[str], *, lock: Project | Lockfile | str | os.PathLike[str] | None = None
) -> Snapshots:
    """The snapshot file ``name_or_path``: a name is ``__snapshots__/NAME.modelfix.toml`` in the
    working folder, a path (with a ``/`` or ending ``.toml``) is that file. ``lock`` is the
    lockfile the handles come from (default: ``MODELFIX_LOCK``, else the nearest ``model-lock.toml``),
    or the :class:`~modelfix.Project` they were loaded by.
    """
    from .project import Project, default_project

    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text.endswith(".toml") or os.sep in text or "/" in text:
        path = Path(text)
    else:
        path = Path(SNAPSHOT_DIR) / f"{text}{SUFFIX}"
    return Snapshots(path.absolute(), lock if isinstance(lock, Project) else default_project(lock))
