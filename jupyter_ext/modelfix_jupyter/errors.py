"""modelfix errors in a notebook: one clear line instead of a traceback.

A :class:`~modelfix.errors.ModelfixError` already names the model, the file
and the fix; the frames under it only bury that line. While the extension is
loaded, the shell's custom exception hook shows any ModelfixError raised in a
cell (by a magic or by ``modelfix.load(...)`` called directly) as::

    LockError: no model named 'nosuch' in /work/model-lock.toml (models: tiny). Add it with `modelfix add ...`.

Ctrl-C (the kernel's interrupt) during ``%load_model`` is shown the same way, as
what happened to the files (:class:`LoadInterrupted`, a ``KeyboardInterrupt``)::

    KeyboardInterrupt: %load_model gemma stopped while downloading gemma-3-270m-q4_k_m.gguf: ...

Other exceptions keep their usual traceback. IPython has one custom-exception
slot; whatever held it before is remembered, still consulted for its own
exception types, and put back on unload.
"""

from __future__ import annotations

from typing import Any

from modelfix.errors import ModelfixError, redact

__all__ = ["install", "uninstall", "one_line", "LoadInterrupted"]

_RED, _RESET = "\x1b[31m", "\x1b[0m"


class LoadInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``%load_model``; the message says what stays in the cache. Shown as ``KeyboardInterrupt``."""


def one_line(error: BaseException) -> str:
    """``TypeName: message`` on one line, tokens removed.

    A message's own lines (one per model, then the fix) are joined so that
    they still read as separate clauses: ``...sync tiny; chat: ... sync chat. Run those...``.
    """
    message = ""
    for part in (" ".join(line.split()) for line in str(error).splitlines()):
        if not part:
            continue
        if message and not message.endswith((":", ".", ";", ",")):
            message += "." if part[0].isupper() else ";"
        message += (" " if message else "") + part
    name = "KeyboardInterrupt" if isinstance(error, LoadInterrupted) else type(error).__name__
    return redact(f"{name}: {message}")


def install(shell: Any) -> None:
    """Show ModelfixError as one line in ``shell`` (idempotent)."""
    if getattr(shell, "_modelfix_previous_exc", None) is not None:
        return
    previous_types = tuple(shell.custom_exceptions)
    previous_handler = shell.CustomTB

    def handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> list[str]:
        if not isinstance(value, ours) and previous_types and isinstance(value, previous_types):
            return previous_handler(etype, value, tb, tb_offset)
        line = one_line(value)
        # In red, as IPython shows an exception's name, unless colours are off (`%colors nocolor`, --colors=nocolor).
        stb = [line if str(getattr(shell, "colors", "")).lower() == "nocolor" else f"{_RED}{line}{_RESET}"]
        # run_code discards what the hook returns; _showtraceback is what
        # prints in a terminal and sends an error message from a kernel.
        shell._showtraceback(KeyboardInterrupt if isinstance(value, LoadInterrupted) else etype, value, stb)
        return stb

    ours = (ModelfixError, LoadInterrupted)
    shell._modelfix_previous_exc = (previous_types, previous_handler)
    shell.set_custom_exc((*previous_types, *ours), handler)


def uninstall(shell: Any) -> None:
    """Give the custom-exception slot back to whoever held it before."""
    previous = getattr(shell, "_modelfix_previous_exc", None)
    if previous is None:
        return
    types, handler = previous
    shell.custom_exceptions = types
    shell.CustomTB = handler
    shell._modelfix_previous_exc = None
