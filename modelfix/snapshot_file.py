"""A snapshot entry and its file: what is recorded, the TOML it is written as, safe concurrent writes.

One file per test module, beside it, readable and diff-friendly (one fact per
line, entries sorted by test and call, so a run in any order writes the same
bytes)::

    tests/__snapshots__/test_chat.modelfix.toml
    ┌──────────────────────────────────────────────────────────────────────────
    │ # modelfix snapshots: ...
    │ version = 1
    │
    │ ["test_capital[chat]"]            the test's name in its module (parameters too)
    │ model = "chat"                    the first comparison of the test; ".1", ".2"...
    │ text = "The capital of France…"   for the next ones ("test_capital[chat].1")
    │ pin.source = "org/repo:Q4_K_M"    (a str is ``text``; a dict or list ``json``, a
    │ pin.revision = "5d8c1a20e0b1…"     JSON text with sorted keys, indented)
    │ pin.files."model.gguf" = "3f2a…"  sha256 of each pinned file
    │ settings.n_ctx = 512              the settings that affect outputs (unset: absent)
    │ runtime.llama_cpp_python = "0.3.16"
    │ runtime.backend = "CPU"
    │ runtime.repack = "on"
    │ runtime.build = "CPU : SSE3 = 1 | AVX2 = 1 | …"
    └──────────────────────────────────────────────────────────────────────────

Multi-line strings are TOML literal strings (``'''``, as written, no escapes)
where their text allows, else basic strings with escapes. The file is read with
tomli and written by hand, so the layout is exactly this one.

Writers (xdist workers recording the tests of one module, a notebook beside a
test run) take turns with a file lock in the temp folder, named by the file's
real path (a lock file beside it would litter the repository); each re-reads
the file under the lock, applies its own entries (new, changed or removed)
and writes the whole file to a temporary file renamed over it: no writer
loses another's entries, no reader sees half a file, an unchanged file is
not rewritten, and a file left with no entries is removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelfixError, SnapshotError

__all__ = [
    "SNAPSHOT_DIR",
    "SUFFIX",
    "FORMAT_VERSION",
    "OUTPUT_SETTINGS",
    "Value",
    "Pin",
    "Runtime",
    "Recording",
    "Snapshot",
    "SnapshotFile",
    "snapshot_path",
    "snapshot_key",
    "parse_key",
    "dumps",
    "loads",
]

SNAPSHOT_DIR = "__snapshots__"
SUFFIX = ".modelfix.toml"
FORMAT_VERSION = 1
RECORD_HINT = "`pytest --modelfix-snapshot-update`"
# The load settings recorded (see modelfix.snapshots), in the order a file lists them.
OUTPUT_SETTINGS = (
    "n_ctx",
    "n_batch",
    "n_ubatch",
    "n_threads",
    "n_threads_batch",
    "seed",
    "flash_attn",
    "rope_freq_base",
    "rope_freq_scale",
    "chat_format",
    "embedding",
    "mmproj",
)
_RESPONSES = ("text_completion", "chat.completion", "chat.completion.chunk")
_VOLATILE = ("id", "created", "model")


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """A value as a snapshot holds it: ``text`` (a str) or ``json`` (its canonical JSON text)."""

    kind: str
    text: str

    @classmethod
    def of(cls, obj: Any) -> Value:
        if isinstance(obj, str):
            return cls("text", obj)
        try:
            text = json.dumps(_stable(obj), sort_keys=True, indent=2, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise SnapshotError(
                f"a snapshot holds a str or a JSON-able value (dict, list, number), not this "
                f"{type(obj).__name__} ({exc}): convert it to one first."
            ) from None
        return cls("json", text)

    @property
    def data(self) -> Any:
        """The value itself: the str, or the JSON parsed back."""
        return self.text if self.kind == "text" else json.loads(self.text)


def _stable(obj: Any) -> Any:
    """``obj`` without the per-call keys of llama-cpp-python's responses (also in a list of them)."""
    if isinstance(obj, list):
        return [_without_volatile(item) for item in obj]
    return _without_volatile(obj)


def _without_volatile(obj: Any) -> Any:
    if not isinstance(obj, Mapping):
        return obj
    data = obj.get("data")
    first = data[0] if isinstance(data, list) and data else None
    embeddings = obj.get("object") == "list" and isinstance(first, Mapping) and first.get("object") == "embedding"
    if obj.get("object") in _RESPONSES or embeddings:
        return {k: v for k, v in obj.items() if k not in _VOLATILE}
    return obj


# --- what produced a value -----------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """The lockfile's pin of the model: its source, revision and each file's sha256, in pin order."""

    source: str
    revision: str | None
    files: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Runtime:
    """What ran the model: llama-cpp-python, llama.cpp's build info, the backend, weight repacking."""

    llama_cpp_python: str
    backend: str
    repack: str
    build: str


@dataclass(frozen=True)
class Recording:
    """Everything recorded beside a value: the model, its pin, the output settings, the runtime."""

    model: str
    pin: Pin
    settings: tuple[tuple[str, Any], ...]  # OUTPUT_SETTINGS order; unset (None) ones left out
    runtime: Runtime


@dataclass(frozen=True)
class Snapshot:
    """One entry of a snapshot file."""

    value: Value
    recording: Recording


# --- names ---------------------------------------------------------------------------------


def snapshot_path(module: Path) -> Path:
    """The snapshot file of test module ``module``: ``__snapshots__/<module>.modelfix.toml`` beside it."""
    return module.parent / SNAPSHOT_DIR / f"{module.stem}{SUFFIX}"


def snapshot_key(name: str, index: int) -> str:
    """The key of a test's ``index``-th comparison (from 0): ``name``, then ``name.1``, ``name.2``..."""
    return name if index == 0 else f"{name}.{index}"


_INDEXED = re.compile(r"(.+)\.(\d+)")


def parse_key(key: str) -> tuple[str, int]:
    """(test name, index) of a key. A test's name has no dot outside its parameters' ``[...]``."""
    match = _INDEXED.fullmatch(key)
    return (match[1], int(match[2])) if match else (key, 0)


# --- writing -------------------------------------------------------------------------------

HEADER = (
    "# modelfix snapshots: recorded model outputs, each with the model pin, load settings and runtime\n"
    "# that produced it. Written by `pytest --modelfix-snapshot-update` (or modelfix.snapshot().check());\n"
    "# review a change here as you would a change of code.\n"
)
_BARE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_NOT_LITERAL = re.compile(r"'''|[\x00-\x08\x0b-\x1f\x7f]")  # what a ''' string cannot hold (\r: parsers drop it)


def dumps(entries: Mapping[str, Snapshot]) -> str:
    """The file's text: the header, then each entry, sorted by (test name, index)."""
    parts = [HEADER, f"version = {FORMAT_VERSION}\n"]
    for key in sorted(entries, key=parse_key):
        snap = entries[key]
        rec, pin, runtime = snap.recording, snap.recording.pin, snap.recording.runtime
        lines = [
            f"\n[{_key(key)}]",
            f"model = {_string(rec.model)}",
            f"{snap.value.kind} = {_string(snap.value.text)}",
            f"pin.source = {_string(pin.source)}",
        ]
        if pin.revision is not None:
            lines.append(f"pin.revision = {_string(pin.revision)}")
        lines += [f"pin.files.{_basic(path)} = {_basic(sha)}" for path, sha in pin.files]
        lines += [f"settings.{_key(name)} = {_scalar(value)}" for name, value in rec.settings]
        lines += [
            f"runtime.llama_cpp_python = {_basic(runtime.llama_cpp_python)}",
            f"runtime.backend = {_basic(runtime.backend)}",
            f"runtime.repack = {_basic(runtime.repack)}",
            f"runtime.build = {_basic(runtime.build)}",
        ]
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else _basic(key)


def _basic(text: str) -> str:
    """A one-line TOML basic string."""
    out = [_ESCAPES.get(ch) or (f"\\u{ord(ch):04X}" if ord(ch) < 0x20 or ch == "\x7f" else ch) for ch in text]
    return '"' + "".join(out) + '"'


def _string(text: str) -> str:
    """A multi-line text as a ``'''`` literal string (as written) where it can be one, else a basic string."""
    if "\n" in text and not _NOT_LITERAL.search(text) and "\r" not in text:
        return "'''\n" + text + "'''"  # the newline after the opening ''' is not part of the string
    return _basic(text)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return _basic(str(value))


# --- reading -------------------------------------------------------------------------------


def loads(text: str, path: Path) -> dict[str, Snapshot]:
    """The entries of the snapshot file ``path`` whose text is ``text``; a one-line SnapshotError if malformed."""
    import tomli

    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise SnapshotError(
            f"{path} is not valid TOML ({exc}): resolve the merge conflict or edit that left it so, "
            f"or delete the file and record it again with {RECORD_HINT}."
        ) from None
    version = data.pop("version", None)
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"{path} has snapshot format version {version!r}; this modelfix reads version {FORMAT_VERSION}. "
            f"Use the modelfix that wrote it, or record it again with {RECORD_HINT}."
        )
    entries = {}
    for key, table in data.items():
        try:
            entries[key] = _entry(table)
        except (KeyError, TypeError, ValueError) as exc:
            what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise SnapshotError(
                f"{path}: snapshot [{_key(key)}] is malformed ({what}): fix it, or delete it and record it "
                f"again with {RECORD_HINT}."
            ) from None
    return entries


def _entry(table: Any) -> Snapshot:
    if not isinstance(table, dict):
        raise TypeError("not a table")
    kinds = [kind for kind in ("text", "json") if kind in table]
    if len(kinds) != 1:
        raise ValueError("it needs one value: text = ... or json = ...")
    text = _str(table, kinds[0])
    if kinds[0] == "json":
        try:  # canonical again, whatever the hand that last edited it
            text = json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False)
        except ValueError as exc:
            raise ValueError(f"json is not JSON: {exc}") from None
    pin, runtime = _table(table, "pin"), _table(table, "runtime")
    files = _table(pin, "files") if "files" in pin else {}
    settings = _table(table, "settings") if "settings" in table else {}
    if not all(isinstance(sha, str) for sha in files.values()):
        raise TypeError("pin.files maps file names to sha256 strings")
    order = {name: i for i, name in enumerate(OUTPUT_SETTINGS)}
    return Snapshot(
        Value(kinds[0], text),
        Recording(
            model=_str(table, "model"),
            pin=Pin(_str(pin, "source"), _str(pin, "revision") if "revision" in pin else None, tuple(files.items())),
            settings=tuple(sorted(settings.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))),
            runtime=Runtime(*(_str(runtime, name) for name in ("llama_cpp_python", "backend", "repack", "build"))),
        ),
    )


def _str(table: Mapping[str, Any], key: str) -> str:
    value = table[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _table(table: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = table[key]
    if not isinstance(value, dict):
        raise TypeError(f"{key} is not a table")
    return value


# --- the file ------------------------------------------------------------------------------


class SnapshotFile:
    """One snapshot file: :meth:`read` its entries, :meth:`write` changes to them (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Snapshot]:
        """Its entries; none if there is no file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeError) as exc:
            raise SnapshotError(f"cannot read the snapshot file {self.path}: {exc}") from None
        return loads(text, self.path)

    def write(self, changes: Mapping[str, Snapshot | None]) -> bool:
        """Set the entries ``changes`` names (``None``: remove it), keeping every other; True if the file changed."""
        from . import safefs

        with safefs.writers_lock(self.path, tag="snapshots", kind="snapshot file", error=SnapshotError):
            current = self.read()
            merged = dict(current)
            for key, snap in changes.items():
                if snap is None:
                    merged.pop(key, None)
                else:
                    merged[key] = snap
            if merged == current:
                return False
            try:
                if not merged:
                    self.path.unlink()
                    with contextlib.suppress(OSError):
                        self.path.parent.rmdir()  # only if empty
                    return True
                self.path.parent.mkdir(parents=True, exist_ok=True)
                safefs.replace(self.path, dumps(merged).encode("utf-8"))
            except (OSError, ModelfixError) as exc:
                raise SnapshotError(
                    f"cannot write the snapshot file {self.path}: {exc}. Make its folder writable."
                ) from None
        return True

    def __repr__(self) -> str:
        return f"SnapshotFile({str(self.path)!r})"
