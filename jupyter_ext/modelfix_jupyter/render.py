"""How modelfix objects look in a notebook: HTML with a plain-text twin.

Every view here is a :class:`Table` (or a :class:`Stack` of them): an object
with ``_repr_html_`` (drawn by Jupyter) and ``__repr__`` (drawn by a terminal
IPython or ``print``), built from the same rows so the two never disagree::

    handle_table    a pool handle: repo, revision, files, settings and where
                    each came from, GPU layers offloaded, memory, state
    entry_table     a lockfile entry: source, revision, pinned files
    models_table    %models: one row per lockfile entry
    cache_view      %modelfix_cache: totals, then one row per cached model

A handle is drawn from the pool's record of it (:func:`modelfix.pool.record`),
never by touching the handle: reading a released handle would load the model
again just to show it. ``llama_cpp.Llama`` cannot grow methods, so its HTML
comes from a formatter registered by type name (:func:`register_formatters`)
that does not import llama_cpp until a handle is actually displayed.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfix.eviction import format_size
from modelfix.lockfile import Entry

if TYPE_CHECKING:
    from modelfix.care import Usage
    from modelfix.config import CacheSettings
    from modelfix.pool import PoolMetrics, Resident
    from modelfix.project import Project
    from modelfix.settings import PoolSettings

__all__ = [
    "Table",
    "Stack",
    "entry_table",
    "handle_table",
    "models_table",
    "cache_view",
    "pool_summary",
    "register_formatters",
    "unregister_formatters",
    "ago",
    "duration",
]

# !important: notebook front ends right-align and centre output tables with
# selectors more specific than a class (JupyterLab's :not(...) rules).
_CSS = (
    "<style>.modelfix-table{margin-left:0!important}"
    ".modelfix-table td,.modelfix-table th{text-align:left!important;padding:2px 10px;vertical-align:top;"
    "font-family:var(--jp-code-font-family,monospace);font-size:12px}"
    ".modelfix-table caption{text-align:left;font-weight:bold;padding:4px 0}</style>"
)
# Where a setting came from (modelfix.settings origins), in a notebook user's words.
_ORIGINS = {
    "call": "load() argument",
    "frontend": "%load_model flag",
    "lockfile": "lockfile",
    "frontend default": "front-end default",
    "default": "default",
    "plugin": "plugin",
}


@dataclass(frozen=True)
class Table:
    """Rows under a header, shown as HTML in Jupyter and as aligned text elsewhere.

    An all-empty header makes a two-column key/value table without a header row.
    """

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    footer: str = ""

    def html(self) -> str:
        """The table without its stylesheet (a :class:`Stack` adds that once)."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        head = f"<thead><tr>{head}</tr></thead>" if any(self.header) else ""
        # A key/value table names each row in its first cell.
        first = "td" if any(self.header) else "th"
        body = "".join(
            "<tr>" + "".join(_html_cell(c, first if i == 0 else "td") for i, c in enumerate(row)) + "</tr>"
            for row in self.rows
        )
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        lines = "<br>".join(html.escape(line) for line in self.footer.splitlines())
        footer = f"<p><small>{lines}</small></p>" if self.footer else ""
        return f'<table class="modelfix-table">{caption}{head}<tbody>{body}</tbody></table>{footer}'

    def _repr_html_(self) -> str:
        return _CSS + self.html()

    def __repr__(self) -> str:
        cells = [list(self.header)] + [[_cell(c) for c in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
        if any(self.header):
            lines.insert(1, "  ".join("-" * w for w in widths))
        else:
            del lines[0]
        if self.caption:
            lines.insert(0, self.caption)
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@dataclass(frozen=True)
class Stack:
    """Tables one under the other."""

    tables: Sequence[Table]

    def _repr_html_(self) -> str:
        return _CSS + "".join(t.html() for t in self.tables)

    def __repr__(self) -> str:
        return "\n\n".join(repr(t) for t in self.tables)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _html_cell(value: Any, tag: str) -> str:
    scope = ' scope="row"' if tag == "th" else ""
    return f"<{tag}{scope}>{html.escape(_cell(value))}</{tag}>"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def ago(timestamp: float | None, now: float | None = None) -> str:
    """``12 s ago`` for a ``time.time()`` stamp (``-`` for never)."""
    if not timestamp:
        return "-"
    seconds = max(0.0, (now or time.time()) - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def duration(seconds: float) -> str:
    """A keep-alive in words: ``30 min``, ``1.5 s``, ``never`` (infinite), ``after each call`` (0)."""
    if math.isinf(seconds):
        return "never"
    if seconds == 0:
        return "after each call"
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _describe_source(entry: Entry, lock_path: Any) -> dict[str, str]:
    from modelfix.errors import ModelfixError
    from modelfix.sources import source_for

    try:
        return source_for(entry.source, lock_path).describe()
    except ModelfixError:
        return {}


def entry_table(entry: Entry, lock_path: Any = None) -> Table:
    """One lockfile entry: its source, revision and pinned files."""
    info = _describe_source(entry, lock_path)
    rows: list[tuple[Any, ...]] = [(f.path, f.role, format_size(f.size), f.sha256[:12]) for f in entry.files]
    settings = ", ".join(f"{k}={v}" for k, v in entry.settings.items()) or "none"
    revision = (entry.revision or "-")[:12]
    where = info.get("repo") or info.get("url") or entry.source
    tag = f":{info['tag']}" if info.get("tag") else ""
    return Table(
        header=("file", "role", "size", "sha256"),
        rows=rows or [("(not pinned: run `modelfix lock`)", "", "", "")],
        caption=f"{entry.name} — {where}{tag} @ {revision} · {format_size(entry.size)}",
        footer=f"lockfile settings: {settings}",
    )


def handle_table(handle: Any, entry: Entry | None = None, lock_path: Any = None) -> Table:
    """A handle: where it came from, how it was loaded, whether it is resident.

    ``entry`` is the lockfile entry it was loaded from, where known.
    """
    from modelfix.handle import PooledLlama

    rows: list[tuple[str, Any]] = []
    if entry is not None:
        info = _describe_source(entry, lock_path)
        rows.append(("repo", info.get("repo") or info.get("url") or entry.source))
        if info.get("tag"):
            rows.append(("tag", info["tag"]))
        rows.append(("revision", entry.revision or "-"))
        rows.extend((f"file ({pin.role})", f"{pin.path} · {format_size(pin.size)}") for pin in entry.files)
    if type(handle) is not PooledLlama:  # type(), not isinstance: a handle passes as a Llama
        rows.append(("file", getattr(handle, "model_path", "-")))
        return Table(("", ""), rows, caption="llama_cpp.Llama (not from the modelfix pool)")
    from modelfix.pool import record

    r = record(handle)
    if entry is None:
        rows.append(("file", f"{r.model_path.name} · {format_size(_file_size(r.model_path))}"))
    rows.append(("settings", _settings_text(r)))
    rows.append(("GPU layers offloaded", gpu_layers_offloaded(r.model_path, r.settings.n_gpu_layers, r.gpu_layers)))
    est = r.estimate
    rows.append(
        (
            "estimated memory",
            f"{format_size(est.total)} (weights {format_size(est.weights)}, "
            f"KV cache {format_size(est.kv_cache)}, compute {format_size(est.compute)})",
        )
    )
    state = "resident" if r.resident else "released (reloads on its next call)"
    rows.append(("state", f"{state} · last used {ago(r.last_used)}"))
    return Table(("", ""), rows, caption=f"{r.name} · llama_cpp.Llama from the modelfix pool")


def _settings_text(r: Resident) -> str:
    """``n_ctx=256 (%load_model flag), seed=42 (lockfile), n_gpu_layers=0 (default)``."""
    shown = [n for n, origin in r.origins.items() if origin != "default"]
    shown += [n for n in ("n_ctx", "n_gpu_layers") if n not in shown]
    parts = []
    for name in shown:
        origin = r.origins.get(name, "default")
        where = f"${origin[4:]}" if origin.startswith("env:") else _ORIGINS.get(origin, origin)
        parts.append(f"{name}={getattr(r.settings, name)} ({where})")
    return ", ".join(parts)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def gpu_layers_offloaded(model_path: Path, asked: int | str, chosen: int | None = None) -> str:
    """``"0 of 3 (this llama.cpp build cannot offload)"``, ``"3 of 3"`` or ``"2 of 3 (auto)"``.

    ``chosen`` is what the pool offloaded (``Resident.gpu_layers``), which ``"auto"`` decides at load.
    """
    import llama_cpp

    from modelfix.estimate import read_header

    total = read_header(model_path).n_layer + 1  # llama.cpp counts the output layer too
    if not llama_cpp.llama_supports_gpu_offload():
        return f"0 of {total} (this llama.cpp build cannot offload)"
    if asked == "auto":
        return f"{chosen} of {total} (auto)" if chosen is not None else f"auto, of {total} (chosen at load)"
    count = int(asked)
    return f"{total if count < 0 else min(count, total)} of {total}"


def models_table(
    project: Project,
    records: Sequence[Resident],
    released: Mapping[str, tuple[float, str]],
    footer: str = "",
) -> Table:
    """``%models``: each entry's pins, cache state, resident handles, memory and last use.

    ``records`` are the pool's records of the handles to account for (resident
    or not); ``released`` maps a model to when and why its handles went.
    """
    lockfile = project.lockfile
    rows = []
    for entry in lockfile.entries.values():
        info = _describe_source(entry, lockfile.path)
        mine = [r for r in records if r.name == entry.name]
        resident = [r for r in mine if r.resident]
        rows.append(
            (
                entry.name,
                info.get("repo") or info.get("url") or entry.source,
                info.get("tag"),
                (entry.revision or "")[:10] or None,
                format_size(entry.size),
                project.cached_state(entry) if entry.files else "not pinned",
                _resident_text(len(resident), released.get(entry.name)),
                format_size(sum(r.cost for r in resident)) if resident else None,
                ago(max((r.last_used for r in mine), default=None)),
            )
        )
    header = ("name", "repo", "tag", "revision", "size", "cached", "resident", "est. memory", "last used")
    return Table(header, rows, caption=str(lockfile.path), footer=footer)


def _resident_text(count: int, released: tuple[float, str] | None) -> str:
    if count:
        return "yes" if count == 1 else f"yes ({count} handles)"
    if released is not None:
        when, why = released
        return f"released {ago(when)}" + (f" ({why})" if why else "")
    return "no"


def pool_summary(settings: PoolSettings, metrics: PoolMetrics) -> str:
    """One line on the pool: what it holds, its budget, keep-alive and counters."""
    budget = "auto (80% of memory)" if settings.memory_budget is None else format_size(settings.memory_budget)
    count = "" if settings.max_count is None else f" · at most {settings.max_count} resident"
    return (
        f"pool: {metrics.resident} resident ({format_size(metrics.resident_bytes)}) · budget {budget}"
        f"{count} · keep-alive {duration(settings.keep_alive)} · {_count(metrics.loads, 'load')}, "
        f"{_count(metrics.hits, 'hit')}, {_count(metrics.evictions, 'eviction')}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cache_view(usage: Usage, cache: CacheSettings, note: str = "") -> Stack:
    """``%modelfix_cache``: where the cache is and what it holds, then one row per cached model."""
    totals = Table(
        ("", ""),
        [
            ("folder", usage.root),
            ("cap", format_size(cache.max_size)),
            ("files", f"{usage.blobs} ({format_size(usage.blob_bytes)})"),
            ("partial downloads", format_size(usage.partial_bytes)),
            ("processes using it", usage.live_leases),
        ],
        caption="modelfix cache",
        footer=note,
    )
    views = Table(
        ("models", "size", "last used"),
        [(", ".join(v.models) or "?", format_size(v.bytes), ago(v.last_used)) for v in usage.views]
        or [("(none)", "", "")],
        caption="cached models",
    )
    return Stack((totals, views))


def register_formatters(shell: Any, entry_for: Callable[[Any], tuple[Any, Any]]) -> None:
    """Teach the shell's HTML and text formatters about handles and lockfile entries.

    ``entry_for(handle)`` returns the lockfile entry and lockfile path the
    handle was loaded from, or (None, None).
    """

    def table(handle: Any) -> Table:
        return handle_table(handle, *entry_for(handle))

    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type_by_name("llama_cpp.llama", "Llama", lambda h: table(h)._repr_html_())
    formatter.for_type(Entry, lambda e: entry_table(e)._repr_html_())
    plain = shell.display_formatter.formatters["text/plain"]
    plain.for_type_by_name("llama_cpp.llama", "Llama", lambda h, p, cycle: p.text(repr(table(h))))
    plain.for_type(Entry, lambda e, p, cycle: p.text(repr(entry_table(e))))


def unregister_formatters(shell: Any) -> None:
    for mime in ("text/html", "text/plain"):
        formatter = shell.display_formatter.formatters[mime]
        for key in ("llama_cpp.llama.Llama", Entry):
            formatter.pop(key, None)
