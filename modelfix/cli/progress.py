"""What the CLI shows on stderr while files arrive: the progress of ``sync``, ``push``, ``run``, ``cache path``.

Drawn from the core's event stream while a command works::

    event                          terminal (stderr is a tty)         otherwise (CI logs, pipes)
    job downloading .. completed   one tqdm bar per file: name,       one line per file fetched:
                                   bytes, speed, then its source      chat: x.gguf  500.5 KB  origin
    job failed                     the bar ends in "failed"           chat: x.gguf  failed
    evict (source "cache")         evicted chat: x.gguf from the cache (both)

A file already in the cache shows nothing; the reason of a failure follows once,
as the command's own ``error:`` line.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..eviction import format_size

if TYPE_CHECKING:
    from tqdm import tqdm

    from ..events import Event

__all__ = ["progress"]


@contextmanager
def progress() -> Iterator[None]:
    """Show, on stderr, the downloads and cache evictions that happen inside the ``with`` block."""
    from ..events import events

    # tqdm is imported with the first bar: a warm sync draws none, and the import is a third of its time.
    bars: dict[tuple[str, str | None], tqdm] = {}
    lock = threading.Lock()
    terminal = sys.stderr.isatty()

    def say(line: str) -> None:
        """One whole line: events come from several fetch threads at once."""
        with lock:
            if bars:
                from tqdm import tqdm

                tqdm.write(line, file=sys.stderr)  # above the bars, not through them
            else:
                sys.stderr.write(line + "\n")  # one write: print() sends the newline apart
                sys.stderr.flush()

    def on_event(event: Event) -> None:
        if event.kind == "evict" and event.source == "cache":
            say(f"evicted {event.model}: {event.file} from the cache")
            return
        if event.kind != "job":
            return
        if not terminal:
            if event.status == "completed" and event.source != "cache":
                say(f"{event.model}: {event.file}  {format_size(event.total)}  {event.source}")
            elif event.status == "failed":
                say(f"{event.model}: {event.file}  failed")
            return
        key = (event.model, event.file)
        with lock:
            bar = bars.get(key)
            if bar is None and event.status == "downloading":
                from tqdm import tqdm

                bar = bars[key] = tqdm(
                    total=event.total,
                    initial=event.done,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1000,
                    desc=f"{event.model}: {event.file}",
                    leave=True,
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            if bar is None:
                return
            bar.update(event.done - bar.n)
            if event.status in ("completed", "failed", "cancelled"):
                bar.set_postfix_str(event.status if event.status != "completed" else event.source)
                bar.close()
                del bars[key]

    with events.listening(on_event):
        try:
            yield
        finally:
            with lock:
                for bar in bars.values():
                    bar.close()
