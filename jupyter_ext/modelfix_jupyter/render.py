"""How modelfix objects look in a notebook: HTML with a plain-text twin.

Every table here is a :class:`Table`, an object with ``_repr_html_`` (drawn by
Jupyter) and ``__repr__`` (drawn by a terminal IPython or ``print``), built
from the same rows so the two never disagree. ``llama_cpp.Llama`` cannot
grow methods, so its HTML comes from a formatter registered by type name
(:func:`register_formatters`) that does not import llama_cpp until a handle
is actually displayed.
"""

from __future__ import annotations

import dataclasses
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelfix.eviction import format_size
from modelfix.lockfile import Entry

__all__ = ["Table", "entry_table", "handle_table", "register_formatters", "unregister_formatters", "ago"]

_CSS = (
    "<style>.modelfix-table td,.modelfix-table th{text-align:left;padding:2px 10px;"
    "font-family:var(--jp-code-font-family,monospace);font-size:12px}"
    ".modelfix-table caption{text-align:left;font-weight:bold;padding:4px 0}</style>"
)


@dataclass(frozen=True)
class Table:
    """Rows under a header, shown as HTML in Jupyter and as aligned text elsewhere."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    footer: str = ""

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        head = f"<thead><tr>{head}</tr></thead>" if any(self.header) else ""
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in self.rows
        )
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        footer = f"<p><small>{html.escape(self.footer)}</small></p>" if self.footer else ""
        return f'{_CSS}<table class="modelfix-table">{caption}{head}<tbody>{body}</tbody></table>{footer}'

    def __repr__(self) -> str:
        cells = [list(self.header)] + [[_cell(c) for c in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
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
    """A pool handle: what it is, where it came from, how it was loaded.

    Reads the pool's record of the handle, never the handle itself: touching
    an evicted handle would load it again just to draw it.
    """
    slot = _slot_of(handle)
    rows: list[tuple[str, Any]] = []
    if entry is not None:
        info = _describe_source(entry, lock_path)
        rows.append(("source", entry.source))
        if info.get("repo"):
            rows.append(("repo", info["repo"]))
        rows.append(("revision", entry.revision or "-"))
        for pin in entry.files:
            rows.append((f"file ({pin.role})", f"{pin.path} · {format_size(pin.size)}"))
    if slot is None:  # a llama_cpp.Llama made outside the pool
        rows.append(("file", getattr(handle, "model_path", "-")))
        return Table(("", ""), rows, caption="llama_cpp.Llama (not from the modelfix pool)")
    settings = slot.settings
    if entry is None:
        rows.append(("file", f"{slot.model_path.name} · {format_size(_file_size(slot.model_path))}"))
    shown = {k: v for k, v in dataclasses.asdict(settings).items() if v not in (None, False) and k != "verbose"}
    rows.append(("settings", ", ".join(f"{k}={v}" for k, v in shown.items())))
    rows.append(("GPU layers offloaded", gpu_layers_offloaded(slot.model_path, settings.n_gpu_layers)))
    rows.append(("estimated memory", format_size(slot.estimate.total)))
    state = "resident" if slot.llama is not None else "released (reloads on next use)"
    rows.append(("state", f"{state} · last used {ago(slot.last_used_wall)}"))
    return Table(("", ""), rows, caption=f"llama_cpp.Llama · {slot.name}")


def _slot_of(handle: Any) -> Any:
    """The pool's record behind a :class:`modelfix.pool.PooledLlama` (None for a plain Llama)."""
    try:
        return object.__getattribute__(handle, "_slot")
    except AttributeError:
        return None


def _file_size(path: Any) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def gpu_layers_offloaded(model_path: Any, asked: int) -> str:
    """``"0 of 3 (this llama.cpp build cannot offload)"`` or ``"3 of 3"``."""
    import llama_cpp

    from modelfix.estimate import read_header

    total = read_header(model_path).n_layer + 1  # llama.cpp counts the output layer too
    if not llama_cpp.llama_supports_gpu_offload():
        return f"0 of {total} (this llama.cpp build cannot offload)"
    return f"{total if asked < 0 else min(asked, total)} of {total}"


def register_formatters(shell: Any, entry_for: Any) -> None:
    """Teach the shell's HTML formatter about handles and lockfile entries.

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

