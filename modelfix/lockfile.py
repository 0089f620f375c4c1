"""``model-lock.toml``: reading, validating and rewriting the pins.

The file is both the user's manifest and the lock, one table per model::

    version = 1

    [models.chat]
    source = "org/repo:Q4_K_M"          # written by the user
    n_ctx = 2048                        # optional reproducibility settings
    revision = "3f1c…"                  # everything below: written by `modelfix lock`
    pinned_from = "org/repo:Q4_K_M"
    files = [
      { path = "m-Q4_K_M-00001-of-00002.gguf", size = 123, sha256 = "…", role = "model" },
      { path = "m-Q4_K_M-00002-of-00002.gguf", size = 456, sha256 = "…", role = "model" },
    ]

``pinned_from`` records the source the pins were resolved from, so that an
edited ``source`` is seen as stale without asking the network.

Reading gives frozen :class:`Entry` objects and accepts a UTF-8 BOM and CRLF
line ends; :mod:`modelfix.locking` writes the pins (one writer at a time,
atomically, keeping comments, layout, line ends and BOM). What a pinned path may
be is :mod:`modelfix.pin_paths`'s, what a setting's value may be
:mod:`modelfix.setting_values`'s::

    Lockfile.load(path), Lockfile.find(lock)   read and check (find: MODELFIX_LOCK, else upward;
                                               where the file is and reading it: modelfix.lockfile_files)
    LockfileMemo().read(path)                  the same, parsed again only when the file changes
    content_key(entry)                         sha256 over the pins: one view, one pool slot per content
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import LockError
from .hashing import Identity, file_identity, sha256_text
from .lockfile_files import LOCK_NAME, MAX_LOCKFILE_BYTES, find_lockfile, nearest_lockfile, read_raw
from .lockfile_lines import Where
from .pin_paths import check_relative_path, check_view_names
from .setting_values import check_setting

__all__ = [
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "ENTRY_SETTINGS",
    "HARDWARE_SETTINGS",
    "ROLES",
    "FilePin",
    "Entry",
    "Pins",
    "RoutingRule",
    "Lockfile",
    "LockfileMemo",
    "content_key",
    "find_lockfile",
    "nearest_lockfile",
    "check_name",
    "is_commit_sha",
    "MAX_FILE_SIZE",
    "MAX_LOCKFILE_BYTES",
    "BOM",
    "read_raw",
]

SCHEMA_VERSION = 1
ROLES = ("model", "mmproj", "preset")

# Settings that make a model behave the same everywhere belong in the lock;
# their expected types are checked on read.
ENTRY_SETTINGS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "n_ctx": (int,),
        "seed": (int,),
        "chat_format": (str,),
        "embedding": (bool,),
        "n_batch": (int,),
        "n_ubatch": (int,),
        "rope_freq_base": (int, float),
        "rope_freq_scale": (int, float),
        "mmproj": (bool,),
        "repack": (str,),
    }
)
# Settings that describe a machine, not a model: refused in the lockfile.
HARDWARE_SETTINGS = frozenset(
    {
        "n_gpu_layers",
        "main_gpu",
        "tensor_split",
        "split_mode",
        "flash_attn",
        "offload_kqv",
        "n_threads",
        "n_threads_batch",
        "use_mmap",
        "use_mlock",
        "verbose",
    }
)
_PIN_KEYS = ("revision", "pinned_from", "files")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # fullmatch: `$` would let a trailing newline pass
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# Far above any real model file (the largest GGUFs are a few hundred GB), far below where sizes
# stop being exact as floats or overflow int64 sums: a bigger `size` is a typo or a tampered file.
MAX_FILE_SIZE = 2**50
BOM = "\ufeff"


@dataclass(frozen=True)
class FilePin:
    """One pinned file: its path in the source, size and sha256.

    ``join`` names the file that legacy multi-part uploads are concatenated
    into (``x.gguf.part1of2`` + ``x.gguf.part2of2`` → ``x.gguf``).
    """

    path: str
    size: int
    sha256: str
    role: str = "model"
    join: str | None = None

    def as_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "role": self.role,
        }
        if self.join:
            data["join"] = self.join
        return data


@dataclass(frozen=True)
class Pins:
    """What ``modelfix lock`` writes for one entry."""

    revision: str | None
    files: tuple[FilePin, ...]
    pinned_from: str


@dataclass(frozen=True)
class Entry:
    """One ``[models.NAME]`` table."""

    name: str
    source: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    revision: str | None = None
    files: tuple[FilePin, ...] = ()
    pinned_from: str | None = None

    @property
    def is_pinned(self) -> bool:
        """Pinned and the pins still belong to the current ``source``."""
        return bool(self.files) and self.pinned_from == self.source

    @property
    def model_files(self) -> tuple[FilePin, ...]:
        return tuple(f for f in self.files if f.role == "model")

    @property
    def mmproj(self) -> FilePin | None:
        return next((f for f in self.files if f.role == "mmproj"), None)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def pins(self) -> Pins | None:
        if not self.files:
            return None
        return Pins(self.revision, self.files, self.pinned_from or self.source)


def content_key(entry: Entry) -> str:
    """sha256 over the entry's pins: entries pinning the same bytes share a view and a pool slot."""
    return sha256_text("".join(f"{p.role}\t{p.path}\t{p.size}\t{p.sha256}\t{p.join or ''}\n" for p in entry.files))


@dataclass(frozen=True)
class RoutingRule:
    """``[[routing.rules]]``: requests whose text matches ``pattern`` go to ``model``."""

    pattern: str
    model: str


@dataclass(frozen=True)
class Lockfile:
    """A parsed, validated lockfile."""

    path: Path
    entries: Mapping[str, Entry]
    routing: tuple[RoutingRule, ...] = ()
    routing_default: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, repin: bool | Collection[str] = ()) -> Lockfile:
        path = Path(path)
        return cls.parse(read_raw(path), path, repin=repin)

    @classmethod
    def find(
        cls,
        explicit: str | os.PathLike[str] | None = None,
        start: Path | None = None,
        *,
        repin: bool | Collection[str] = (),
    ) -> Lockfile:
        return cls.load(find_lockfile(explicit, start), repin=repin)

    @classmethod
    def parse(cls, text: str, path: Path, *, repin: bool | Collection[str] = ()) -> Lockfile:
        """``repin``: the entries (``True``: all) about to be pinned anew, where a broken pin (a
        hand-edited revision) reads as none, so that ``lock --upgrade`` repairs it."""
        text = text.removeprefix(BOM)  # editors on Windows may save one; TOML itself has no BOM
        data = _parse_toml(text, path)
        where = Where(path, text)
        unknown = set(data) - {"version", "models", "routing"}
        if unknown:
            key = sorted(unknown)[0]
            raise LockError(f"{where(key=key)}: unknown top-level key {key!r}. Valid keys: version, models, routing.")
        version = data.get("version", SCHEMA_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise LockError(
                f"{where(key='version')}: `version` must be an integer: version = {SCHEMA_VERSION}, not {version!r}."
            )
        if version != SCHEMA_VERSION:
            raise LockError(
                f"{where(key='version')}: lockfile version {version!r} is not "
                f"supported (this modelfix reads version {SCHEMA_VERSION}). Upgrade modelfix."
            )
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise LockError(f"{where(key='models')}: `models` must be a table of [models.NAME] tables.")
        entries = {
            name: _entry(name, table, where, strict_pins=not (repin is True or (repin and name in repin)))
            for name, table in models.items()
        }
        rules, default = _routing(data.get("routing", {}), entries, where)
        return cls(path=path, entries=MappingProxyType(entries), routing=rules, routing_default=default)

    def where(self, name: str) -> str:
        """``path:line`` of ``[models.name]``, for messages that point at the entry."""
        try:
            return Where(self.path, read_raw(self.path).removeprefix(BOM))(name)
        except LockError:
            return str(self.path)

    def entry(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(self.entries) or "none yet"
            # A source given where a name goes (`%load_model org/repo:Q4_K_M`): pin it under a name first.
            fix = f"modelfix add {name} ORG/REPO:TAG" if _NAME_RE.fullmatch(name) else f"modelfix add NAME {name}"
            raise LockError(
                f"no model named {name!r} in {self.path} (models: {known}). Add it with `{fix}`.",
                model=name,
                file=str(self.path),
            ) from None


# --- reading ---------------------------------------------------------------


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    """The TOML document as plain data, read by tomli (compiled: about 15x tomlkit's speed, linear).

    tomlkit, which keeps comments and layout for writing, would take 20 s for 16,000 entries. A
    file tomli refuses is parsed again by tomlkit for its more precise message.
    """
    import tomli as tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        import tomlkit
        from tomlkit.exceptions import ParseError

        try:
            tomlkit.parse(text)
        except ParseError as precise:
            reason = str(precise).split(" at line")[0].rstrip(".")  # tomlkit ends some reasons with one
            raise LockError(
                f"{path}:{precise.line}:{precise.col}: invalid TOML: {reason}. Fix the syntax there."
            ) from None
        found = re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", str(exc))
        reason, line, col = found.groups() if found else (str(exc), "1", "1")
        raise LockError(f"{path}:{line}:{col}: invalid TOML: {reason}. Fix the syntax there.") from None


def _entry(name: str, table: Any, where: Where, *, strict_pins: bool = True) -> Entry:
    if not _NAME_RE.fullmatch(name):
        check_name(name, where(name))
    if not isinstance(table, dict):
        raise LockError(f"{where(name)}: [models.{name}] must be a table with a `source` key.")
    for key in table:
        if key in HARDWARE_SETTINGS:
            raise LockError(
                f"{where(name, key)}: {key!r} is a machine setting and does not "
                "belong in the lockfile. Set it per machine instead: an environment variable "
                "(MODELFIX_GPU_LAYERS, MODELFIX_THREADS, ...), a pytest option, a %load_model flag "
                "or a load() argument."
            )
        if key not in ENTRY_SETTINGS and key not in _PIN_KEYS and key != "source":
            valid = ", ".join(["source", *ENTRY_SETTINGS, *_PIN_KEYS])
            raise LockError(f"{where(name, key)}: unknown key {key!r} in [models.{name}]. Valid keys: {valid}.")
    source = table.get("source")
    if not isinstance(source, str) or not source.strip():
        raise LockError(f'{where(name)}: [models.{name}] has no `source`. Add e.g. source = "org/repo:Q4_K_M".')
    settings = {}
    for key, types in ENTRY_SETTINGS.items():
        if key in table:
            value = table[key]
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                want = " or ".join(t.__name__ for t in types)
                raise LockError(f"{where(name, key)}: {key} must be {want}, got {value!r}.")
            settings[key] = _bounded(key, value, functools.partial(where, name, key))
    try:
        revision, files = _pins(name, table, where)
    except LockError:
        if strict_pins:
            raise
        revision, files = None, ()  # about to be pinned anew: a broken pin reads as none
    pinned_from = table.get("pinned_from")
    return Entry(
        name=name,
        source=source.strip(),
        settings=MappingProxyType(settings),
        revision=revision,
        files=files,
        pinned_from=pinned_from if isinstance(pinned_from, str) else None,
    )


def _pins(name: str, table: dict[str, Any], where: Where) -> tuple[str | None, tuple[FilePin, ...]]:
    revision = table.get("revision")
    # Absent for URL and path sources; for the Hub it goes into download URLs, so nothing but a
    # full commit sha (never a branch name that moves, never "../x") is trusted there.
    if revision is not None and not (isinstance(revision, str) and is_commit_sha(revision)):
        raise LockError(
            f"{where(name, 'revision')}: revision must be a full commit sha "
            f"(40 lowercase hex characters), got {revision!r}. "
            f"Run `modelfix lock --upgrade --model {name}` to re-pin."
        )
    files = tuple(_pin(item, i, name, where) for i, item in enumerate(_list(table, "files", name, where)))
    check_view_names([(f.path, f.join) for f in files], _EntryLabel(where, name))
    return revision, files


def _bounded(key: str, value: Any, where: Callable[[], str]) -> Any:
    """``value`` of setting ``key`` if a load would accept it (n_ctx at most 2**24, floats finite ...)."""
    try:
        return check_setting(key, value)
    except ValueError as exc:
        raise LockError(f"{where()}: {key} must be {exc}, got {value!r}.") from None


def _list(table: dict, key: str, name: str, where: Where) -> list:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise LockError(f"{where(name, key)}: `{key}` must be a list of inline tables.")
    return value


def is_commit_sha(revision: str) -> bool:
    """A full commit sha, as Hub pins record it: 40 lowercase hex characters."""
    return bool(_COMMIT_RE.fullmatch(revision))


def check_name(name: str, where: str | None = None) -> None:
    """Refuse a model name that is not letters, digits, `_`, `.`, `-` starting with a letter or digit."""
    if not _NAME_RE.fullmatch(name):
        raise LockError(
            f"{where + ': ' if where else ''}model name {name!r} must start with a letter or digit, "
            "followed by letters, digits, '_', '.' or '-' (e.g. chat or qwen-small)."
        )


class _EntryLabel:
    """``path:line: [models.NAME]`` (the line of its ``files``), looked up only when an error is raised."""

    def __init__(self, where: Where, name: str) -> None:
        self.where, self.name = where, name

    def __str__(self) -> str:
        return f"{self.where(self.name, 'files')}: [models.{self.name}]"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class _PinLabel:
    """``path:line: files[i] of [models.NAME]`` for the ``index``-th pin, looked up only when an error is raised."""

    def __init__(self, where: Where, name: str, index: int) -> None:
        self.where, self.name, self.index = where, name, index

    def __str__(self) -> str:
        return f"{self.where(self.name, 'files', self.index)}: files[{self.index}] of [models.{self.name}]"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _pin(item: Any, index: int, name: str, where: Where) -> FilePin:
    label = _PinLabel(where, name, index)
    if not isinstance(item, dict):
        raise LockError(f"{label} must be an inline table {{ path, size, sha256, role }}.")
    extra = set(item) - {"path", "size", "sha256", "role", "join"}
    if extra:
        raise LockError(f"{label}: unknown key {sorted(extra)[0]!r} (valid: path, size, sha256, role, join).")
    file_path, size, sha, role = item.get("path"), item.get("size"), item.get("sha256"), item.get("role", "model")
    if not isinstance(file_path, str):
        raise LockError(f"{label}: missing `path`. Run `modelfix lock --upgrade --model {name}` to re-pin.")
    check_relative_path(file_path, label)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
        raise LockError(
            f"{label} ({file_path}): size must be a non-negative integer of at most 2**50 bytes, "
            f"got {size!r}. Run `modelfix lock --upgrade --model {name}` to re-pin."
        )
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        raise LockError(
            f"{label} ({file_path}): sha256 must be 64 lowercase hex characters, got {sha!r}. "
            f"Run `modelfix lock --upgrade --model {name}` to re-pin."
        )
    if role not in ROLES:
        raise LockError(f"{label} ({file_path}): role must be one of {', '.join(ROLES)}, got {role!r}.")
    join = item.get("join")
    if join is not None:
        if not isinstance(join, str):
            raise LockError(
                f"{label} ({file_path}): join must be the name of the joined file (a string), got {join!r}."
            )
        check_relative_path(join, f"{label} join")
    return FilePin(path=file_path, size=size, sha256=sha, role=role, join=join)


def _routing(data: Any, entries: dict, where: Where) -> tuple[tuple[RoutingRule, ...], str | None]:
    if not isinstance(data, dict):
        raise LockError(f"{where(key='routing')}: [routing] must be a table.")
    unknown = set(data) - {"rules", "default"}
    if unknown:
        raise LockError(
            f"{where(key='routing')}: unknown key {sorted(unknown)[0]!r} in [routing] (valid: rules, default)."
        )
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise LockError(
            f"{where(key='routing')}: routing.rules must be a list of tables: "
            'rules = [{ pattern = "...", model = "NAME" }].'
        )
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise LockError(f"{where(key='routing')}: routing.default must be a model name (a string), not {default!r}.")
    rules = []
    for i, rule in enumerate(raw_rules):
        if (
            not isinstance(rule, dict)
            or not isinstance(rule.get("pattern"), str)
            or not isinstance(rule.get("model"), str)
        ):
            raise LockError(f"{where(key='routing')}: routing.rules[{i}] needs `pattern` and `model` strings.")
        extra = set(rule) - {"pattern", "model"}
        if extra:
            raise LockError(
                f"{where(key='routing')}: unknown key {sorted(extra)[0]!r} in routing.rules[{i}] "
                "(valid: pattern, model)."
            )
        try:
            re.compile(rule["pattern"])
        except re.error as exc:
            raise LockError(
                f"{where(key='routing')}: routing.rules[{i}] pattern is not a valid regex: {exc}."
            ) from None
        rules.append(RoutingRule(rule["pattern"], rule["model"]))
    for model in [r.model for r in rules] + ([default] if default else []):
        if model not in entries:
            raise LockError(
                f"{where(key='routing')}: routing names model {model!r}, which has no [models.{model}] table."
            )
    return tuple(rules), default


# --- reading once per change -----------------------------------------------

# A file written this recently may be written again within the same tick of the filesystem's clock
# (a jiffy on ext4, up to 2 s elsewhere) and keep its identity: its text is compared instead.
_RACY_NS = 2_000_000_000


class LockfileMemo:
    """Lockfiles parsed once per change of the file: a warm read pays a stat, not a TOML parse.

    Keeps ``path -> (identity, text, Lockfile)``, at most ``limit`` paths. A file whose
    identity (inode included: editors and ``modelfix lock`` replace the file) is unchanged
    and older than the filesystem's clock tick is not read; one written in the last two
    seconds is read again and parsed only if its text changed.
    """

    def __init__(self, limit: int = 64) -> None:
        self._seen: dict[str, tuple[Identity, str, Lockfile]] = {}
        self._limit = limit

    def read(self, path: str) -> Lockfile:
        """The lockfile at ``path`` (absolute), as it is now."""
        try:
            stamp = file_identity(path)
        except OSError:
            return Lockfile.load(path)  # raises the friendly "no such lockfile"
        cached = self._seen.get(path)
        if cached and cached[0] == stamp and time.time_ns() - stamp[3] > _RACY_NS:
            return cached[2]
        text = read_raw(Path(path))  # a regular file of a bounded size, or a one-line LockError
        parsed = cached[2] if cached and cached[1] == text else Lockfile.parse(text, Path(path))
        if len(self._seen) >= self._limit and path not in self._seen:
            self._seen.clear()
        self._seen[path] = (stamp, text, parsed)
        return parsed
