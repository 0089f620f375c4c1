"""Progress of ``%load_model``: the core's event stream drawn in a notebook.

One reporter per magic call subscribes to :data:`modelfix.events.events` for
the duration of the call and draws what it hears about the model it loads::

    tiny   tiny-Q4_K_M.gguf   [██████████░░░░]  1.2 MB / 2.0 MB · 8.1 MB/s · downloading
    tiny   mmproj.gguf        [██████████████]  300 kB · verified · cached
    tiny   llama.cpp          [██████████████]  loaded in 0.21 s

In a kernel that can show widgets (ipykernel with a comm manager) each row is
an ipywidgets ``HBox``; elsewhere (a terminal IPython, a plain
``InteractiveShell``) the same rows become one printed line per status
change. The widget path never goes through ``tqdm.notebook``, so there is no
"IProgress not found" warning to silence.

Events arrive on fetch worker threads. Widgets are created up front (the
container is displayed from the cell's thread, so its output lands in the
cell) and later rows are appended as children, which only sends comm
messages and is safe from any thread.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from modelfix.eviction import format_size
from modelfix.events import Event

__all__ = ["Reporter", "WidgetReporter", "TextReporter", "reporter_for", "widgets_available"]

# Byte progress is redrawn at most this often per row; status changes always redraw.
_REDRAW_SECONDS = 0.1
_STYLES = {"downloading": "", "verifying": "info", "completed": "success", "loaded": "success",
           "failed": "danger", "cancelled": "warning", "loading": "info", "queued": ""}


def widgets_available(shell: Any) -> bool:
    """True when ``shell`` runs in a kernel whose front end can draw widgets."""
    if getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
        from comm import get_comm_manager

        return get_comm_manager() is not None
    except Exception:  # no comm machinery: nothing to draw widgets with
        return False


@dataclass
class _Row:
    """What the reporter knows about one file (or the load step) of the model."""

    label: str
    status: str = "queued"
    done: int = 0
    total: int = 0
    source: str = ""
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    drawn: float = 0.0

    def speed(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def text(self) -> str:
        if self.status == "loaded":
            return f"loaded in {self.seconds:.2f} s"
        if self.status == "loading":
            return "loading…"
        size = format_size(self.total) if self.total else ""
        if self.status == "downloading":
            speed = f" · {format_size(self.speed())}/s" if self.done else ""
            return f"{format_size(self.done)} / {size}{speed} · downloading"
        origin = f" · {self.source}" if self.source else ""
        words = {"completed": "verified", "verifying": "verifying"}
        return f"{size} · {words.get(self.status, self.status)}{origin}".lstrip(" ·")


class Reporter:
    """Listens to events about one model and draws them; subclasses draw rows."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.rows: dict[str, _Row] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if event.model != self.model:
            return
        if event.kind == "evict":
            self.note(f"released {event.model}" + (f": {event.message}" if event.message else ""))
            return
        key = "llama.cpp" if event.kind == "load" else (event.file or "?")
        with self._lock:
            row = self.rows.get(key)
            new = row is None
            if new:
                row = self.rows[key] = _Row(label=key)
            changed = new or row.status != event.status
            if event.kind == "load":
                if event.status == "loading":
                    row.started = time.monotonic()
                row.status, row.seconds = event.status, event.seconds
                row.done = row.total = 1 if event.status == "loaded" else 0
            else:
                if event.status == "downloading" and row.status != "downloading":
                    row.started = time.monotonic()
                row.status, row.done, row.total = event.status, event.done, event.total or row.total
                row.source = event.source or row.source
            now = time.monotonic()
            if not changed and now - row.drawn < _REDRAW_SECONDS:
                return
            row.drawn = now
        self.draw(row, new=new, changed=changed)

    def draw(self, row: _Row, *, new: bool, changed: bool) -> None:
        raise NotImplementedError

    def note(self, text: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Called once the load finished or failed."""


class TextReporter(Reporter):
    """One printed line per status change: terminals, plain shells, logs."""

    def __init__(self, model: str, stream: Any = None) -> None:
        super().__init__(model)
        self.stream = stream

    def draw(self, row: _Row, *, new: bool, changed: bool) -> None:
        if changed and row.status != "queued":
            self.note(f"{row.label}: {row.text()}")

    def note(self, text: str) -> None:
        print(f"[modelfix] {self.model} {text}", file=self.stream or sys.stdout, flush=True)


class WidgetReporter(Reporter):
    """An ipywidgets box with one bar per file and one for the load."""

    def __init__(self, model: str) -> None:
        import ipywidgets as w
        from IPython.display import display

        super().__init__(model)
        self._w = w
        self.title = w.HTML(f"<b>{_escape(model)}</b>")
        self.box = w.VBox([self.title])
        self.bars: dict[str, tuple[Any, Any]] = {}
        display(self.box)

    def draw(self, row: _Row, *, new: bool, changed: bool) -> None:
        w = self._w
        if row.label not in self.bars:
            bar = w.IntProgress(value=0, min=0, max=1, description=_short(row.label),
                                layout=w.Layout(width="60%"), style={"description_width": "30%"})
            bar.description_tooltip = row.label
            info = w.HTML()
            self.bars[row.label] = (bar, info)
            self.box.children = (*self.box.children, w.HBox([bar, info]))
        bar, info = self.bars[row.label]
        total = max(row.total, 1)
        bar.max = total
        bar.value = min(row.done, total) if row.status not in ("completed", "loaded") else total
        bar.bar_style = _STYLES.get(row.status, "")
        info.value = _escape(row.text())

    def note(self, text: str) -> None:
        self.box.children = (*self.box.children, self._w.HTML(_escape(text)))


def reporter_for(shell: Any, model: str) -> Reporter:
    """The reporter that fits where ``shell`` runs."""
    return WidgetReporter(model) if widgets_available(shell) else TextReporter(model)


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else "…" + label[-(width - 1):]


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=False)
