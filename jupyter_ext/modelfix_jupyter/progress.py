"""Progress of ``%load_model``: the core's event stream drawn in a notebook.

One reporter per magic call listens to :data:`modelfix.events.events` for the
duration of the call and draws what it hears about the model it loads, one
row per file and one for llama.cpp::

    tiny
    tiny-Q4_0.gguf   [███████░░░░░░░]  160.0 KB / 218.9 KB · 8.1 MB/s · downloading
    preset.ini         [██████████████]  106 B · verified · origin
    llama.cpp          [██████████████]  loaded in 0.21 s · ≈ 3.4 MB

A file goes ``queued → downloading → verifying → verified`` (or ``failed``);
the model then ``loading → loaded``. In a kernel that can show widgets
(ipykernel with a comm manager) each row is an ipywidgets bar; elsewhere (a
terminal IPython, a plain ``InteractiveShell``, a log) each status change is
one printed line. The widget path never goes through ``tqdm.notebook``, so
there is no "IProgress not found" warning to silence.

Nothing is drawn until the first event: a pool hit (the handle is resident
already) emits none, so it shows nothing and returns at once. Events arrive
on fetch worker threads as well as the cell's thread; each reporter draws
under its own lock, so rows are added once and in order. The first event
of a load (a job being queued, or the load starting) is emitted on the cell's
thread, so the widget box is displayed there and lands in the cell.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from modelfix.events import Event
from modelfix.eviction import format_size

__all__ = ["Reporter", "WidgetReporter", "TextReporter", "reporter_for", "widgets_available"]

# Byte progress is redrawn at most this often per row; status changes always redraw.
_REDRAW_SECONDS = 0.1
_LOAD_ROW = "llama.cpp"
_BAR_STYLES = {
    "verifying": "info",
    "completed": "success",
    "loading": "info",
    "loaded": "success",
    "failed": "danger",
    "cancelled": "warning",
}


def widgets_available(shell: Any) -> bool:
    """True when ``shell`` runs in a kernel whose front end can draw widgets."""
    if getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401  # only whether it imports: the widgets are made elsewhere
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
    message: str = ""
    started: float = field(default_factory=time.monotonic)
    download_speed: float = 0.0  # bytes/s, kept once the download ends
    drawn: float = 0.0
    # (when, bytes) at the first byte count of the download. A resumed download's first count
    # includes what an earlier one left in the cache: the speed is measured from here, else
    # 200 MB found on disk read as 1 GB/s.
    counted: tuple[float, int] | None = None

    def update(self, event: Event) -> None:
        now = time.monotonic()
        if event.status in ("downloading", "loading") and self.status != event.status:
            self.started = now
        if event.status == "downloading" and event.done and self.counted is None:
            self.counted = (now, event.done)
        if self.status == "downloading" and event.status != "downloading":
            self.download_speed = self.speed(now)
        self.status, self.message = event.status, event.message
        self.done, self.total = event.done, event.total or self.total
        self.source = event.source or self.source
        self.seconds = event.seconds

    def speed(self, now: float | None = None) -> float:
        now = now or time.monotonic()
        if self.counted is not None and self.done > self.counted[1] and now > self.counted[0]:
            return (self.done - self.counted[1]) / (now - self.counted[0])
        elapsed = now - self.started  # one count only (a small file): all of it since the start
        return self.done / elapsed if elapsed > 0 and self.done else 0.0

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "loaded")

    def text(self) -> str:
        """The row's words, as both the widget and the text line show them."""
        size = format_size(self.total) if self.total else ""
        if self.label == _LOAD_ROW:
            estimate = f" · ≈ {size}" if size else ""
            if self.status == "loaded":
                return f"loaded in {self.seconds:.2f} s{estimate}"
            if self.status == "loading":
                return f"loading{estimate}"
            return f"failed: {self.message}" if self.status == "failed" else self.status
        if self.status == "downloading":
            speed = self.speed()
            rate = f" · {format_size(speed)}/s" if speed else ""
            return f"{format_size(self.done)} / {size}{rate} · downloading"
        if self.status == "completed":
            rate = f" · {format_size(self.download_speed)}/s" if self.download_speed else ""
            return f"{size} · verified · {self.source or 'cache'}{rate}"
        if self.status == "failed":
            return f"{size} · failed: {self.message}"
        if self.status == "cancelled" and self.done:
            return f"{format_size(self.done)} / {size} · cancelled (kept: resumes on the next load)"
        return f"{size} · {self.status}"


class Reporter:
    """Listens to events about one model and draws them; subclasses draw rows."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.rows: dict[str, _Row] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if event.kind == "evict" and event.source == "pool" and event.message == f"room for {self.model}":
            with self._lock:
                self.note(f"released {event.model} to make room ({format_size(event.total)})")
            return
        if event.model != self.model or event.kind not in ("job", "load"):
            return
        key = _LOAD_ROW if event.kind == "load" else (event.file or "?")
        with self._lock:
            row = self.rows.get(key)
            new = row is None
            if row is None:
                row = self.rows[key] = _Row(label=key)
            changed = new or row.status != event.status
            row.update(event)
            now = time.monotonic()
            if not changed and now - row.drawn < _REDRAW_SECONDS:
                return
            row.drawn = now
            self.draw(row)

    def interrupted(self) -> str:
        """What an interrupt left: the files whose download stopped (kept, resumable), or the load."""
        with self._lock:
            rows = list(self.rows.values())
        stopped = [r for r in rows if r.label != _LOAD_ROW and not r.finished and r.status != "failed"]
        files = [
            f"{r.label} ({format_size(r.done)} of {format_size(r.total)} kept in the cache)" if r.done else r.label
            for r in stopped
        ]
        where = f" while downloading {', '.join(files)}" if stopped else ""
        if not stopped and any(r.label == _LOAD_ROW for r in rows):
            where = " while llama.cpp loaded it"
        return f"%load_model {self.model} stopped{where}. Run the cell again to {'resume' if stopped else 'load it'}."

    def draw(self, row: _Row) -> None:
        """Show ``row`` (called under the reporter's lock)."""
        raise NotImplementedError

    def note(self, text: str) -> None:
        """Show a line that is not a row: another model released to make room."""
        raise NotImplementedError

    def finish(self) -> None:
        """The magic is done (loaded, failed or interrupted): nothing more will be drawn."""


class TextReporter(Reporter):
    """One printed line per status change: terminals, plain shells, logs."""

    def __init__(self, model: str, stream: Any = None) -> None:
        super().__init__(model)
        self.stream = stream
        self._printed: dict[str, str] = {}

    def draw(self, row: _Row) -> None:
        if row.status == "queued" or self._printed.get(row.label) == row.status:
            return  # byte progress would be a line per chunk: status changes only
        self._printed[row.label] = row.status
        text = f"downloading {format_size(row.total)}" if row.status == "downloading" else row.text()
        self.note(f"{row.label}: {text}")

    def note(self, text: str) -> None:
        print(f"[modelfix] {self.model} {text}", file=self.stream or sys.stdout, flush=True)


class WidgetReporter(Reporter):
    """An ipywidgets box: the model's name, then one bar per file and one for the load."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.box: Any = None
        self.bars: dict[str, tuple[Any, Any]] = {}
        self.notes: list[str] = []
        self._display: Any = None

    def _box(self) -> Any:
        if self.box is None:  # the first event: a pool hit never gets here
            import ipywidgets as w
            from IPython.display import display

            self.box = w.VBox([w.HTML(f"<b>{_escape(self.model)}</b>")])
            # A front end that cannot draw widgets (jupyter console, nbconvert to
            # text) shows text/plain: a sentence, not the VBox(children=...) repr.
            bundle = {**self.box._repr_mimebundle_(), "text/plain": f"[modelfix] {self.model}: progress (widget)"}
            self._display = display(bundle, raw=True, display_id=True)
        return self.box

    def draw(self, row: _Row) -> None:
        import ipywidgets as w

        self._box()
        if row.label not in self.bars:
            bar = w.IntProgress(
                value=0,
                min=0,
                max=1,
                description=_short(row.label),
                tooltip=row.label,
                layout=w.Layout(width="55%"),
                style={"description_width": "35%"},
            )
            info = w.HTML()
            self.bars[row.label] = (bar, info)
            self.box.children = (*self.box.children, w.HBox([bar, info]))
        bar, info = self.bars[row.label]
        total = max(row.total, 1)
        bar.max = total
        bar.value = total if row.finished else min(row.done, total)
        bar.bar_style = _BAR_STYLES.get(row.status, "")
        info.value = _escape(row.text())

    def note(self, text: str) -> None:
        import ipywidgets as w

        box = self._box()
        box.children = (*box.children, w.HTML(_escape(text)))
        self.notes.append(text)

    def finish(self) -> None:
        """Replace the "progress (widget)" text with the final rows.

        What a saved notebook shows where widgets are not drawn (GitHub, nbconvert to
        text or markdown, ``jupyter console``): the outcome, as the headless runner prints it.
        """
        if self._display is None:
            return
        with self._lock:
            rows = [f"{row.label}  {row.text()}" for row in self.rows.values() if row.status != "queued"]
            text = "\n".join([self.model, *rows, *self.notes])
        self._display.update({**self.box._repr_mimebundle_(), "text/plain": text}, raw=True)


def reporter_for(shell: Any, model: str) -> Reporter:
    """The reporter that fits where ``shell`` runs."""
    return WidgetReporter(model) if widgets_available(shell) else TextReporter(model)


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else "…" + label[-(width - 1) :]


def _escape(text: str) -> str:
    return html.escape(text, quote=False)
