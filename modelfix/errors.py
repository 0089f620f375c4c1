"""Every exception modelfix raises, in one place.

Every error a user can cause or meet is a ``ModelfixError``; its message names
the thing at fault (model, file, lockfile line) and the fix::

    ModelfixError              model=, file=, url= where known (None otherwise)
     ├── LockError             model-lock.toml is malformed, missing, unpinned or stale
     ├── SourceError           a source string or the repository it names is unusable
     │    ├── AuthError        a private/gated repository without a valid token
     │    └── SourceMissing    the pinned file is not where its source says (404, no such key)
     ├── NetworkError          the origin did not answer after retries
     ├── IntegrityError        bytes did not match their pin (never enter the store)
     ├── CacheError            the store cannot be written, or is over its cap
     │    └── PlantedError     a link (or a pipe...) planted in the cache, never followed
     ├── OfflineError          offline mode and something is not cached
     ├── Cancelled             a fetch was cancelled (``sync(cancel=...)``, Ctrl-C); its partial
     │                         download stays and resumes next time
     ├── SettingsError         an unknown or invalid load setting
     ├── MemoryBudgetError     a model does not fit in the pool's memory budget
     ├── BackendError          this llama.cpp build crashes on this CPU (the probe found it), or
     │                         the probe could not run
     ├── SnapshotError         a snapshot file cannot be read or written, or a value cannot be stored
     └── NoRoom                internal: the eviction plan found too little room; the store and the
                               pool turn it into CacheError or MemoryBudgetError before it reaches you

    AssertionError
     └── SnapshotMismatch      a value is not what its snapshot recorded: a failed check, not an
                               error of modelfix's (pytest shows it as a failed assertion)

A lower layer raises what it knows (a URL, a byte count); a caller that knows more (the model
and the file) adds it to the same exception with :meth:`ModelfixError.add_context`, then
re-raises it: type, attributes and traceback stay. Signals that never leave modelfix
(:class:`modelfix.retry.Transient`: try again) are not errors and live where they are used.

Tokens and URL credentials never appear in messages: :class:`ModelfixError` passes its message
through :func:`redact`; build other text a user sees (logs, reports) with it too.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "ModelfixError",
    "LockError",
    "SourceError",
    "AuthError",
    "SourceMissing",
    "NetworkError",
    "IntegrityError",
    "CacheError",
    "PlantedError",
    "OfflineError",
    "Cancelled",
    "SettingsError",
    "MemoryBudgetError",
    "BackendError",
    "SnapshotError",
    "NoRoom",
    "SnapshotMismatch",
    "redact",
]


class ModelfixError(Exception):
    """Base class: catch this to handle anything modelfix reports.

    ``model``, ``file`` and ``url`` name what the error is about, where the code that raised
    it (or a caller, :meth:`add_context`) knew; each is None otherwise.
    """

    def __init__(
        self, message: str = "", *, model: str | None = None, file: str | None = None, url: str | None = None
    ) -> None:
        super().__init__(redact(message))
        self.model, self.file, self.url = model, file, redact(url) if url else url

    def add_context(
        self,
        prefix: str = "",
        *,
        suffix: str = "",
        model: str | None = None,
        file: str | None = None,
        url: str | None = None,
    ) -> None:
        """Put what the caller knows into this error: ``prefix: message suffix``, and each of
        ``model``/``file``/``url`` that is not set yet. Then ``raise`` it again: a new
        exception of the same type would lose the attributes and the traceback."""
        message = str(self)
        self.args = (redact(f"{prefix}: {message}{suffix}" if prefix else f"{message}{suffix}"), *self.args[1:])
        # getattr: a plugin's subclass may not have called this class's __init__.
        self.model = getattr(self, "model", None) or model
        self.file = getattr(self, "file", None) or file
        self.url = getattr(self, "url", None) or (redact(url) if url else url)


class LockError(ModelfixError):
    """The lockfile is malformed, missing, unpinned or out of date."""


class SourceError(ModelfixError):
    """A source string, or the repository/file it points to, is unusable."""


class AuthError(SourceError):
    """The repository is private or gated and no valid token was given."""


class SourceMissing(SourceError):
    """The file is not at this location (404, no such key or path)."""


class NetworkError(ModelfixError):
    """The origin kept failing after retries."""


class IntegrityError(ModelfixError):
    """Downloaded or cached bytes do not match their pin."""


class CacheError(ModelfixError):
    """The store cannot be written or cannot make room."""


class PlantedError(CacheError):
    """Something in the cache is not what modelfix makes there: a link, or not a file or folder."""


class OfflineError(ModelfixError):
    """Offline mode is on and a needed file is not in the cache."""


class Cancelled(ModelfixError):
    """A fetch was cancelled; its partial download stays and resumes next time."""


class SettingsError(ModelfixError):
    """A load setting is unknown or has an invalid value."""


class MemoryBudgetError(ModelfixError):
    """A handle cannot fit in the pool's memory budget even after evicting."""


class BackendError(ModelfixError):
    """llama.cpp's CPU backend dies on this host (see :mod:`modelfix.probe`), or the probe could not run."""


class SnapshotError(ModelfixError):
    """A snapshot file is unreadable or cannot be written, or a value cannot be recorded in one."""


class NoRoom(ModelfixError):
    """Even evicting everything that is not held leaves too little room (:func:`modelfix.eviction.plan`).

    Internal: the store and the pool turn this into their own error kind with a message naming
    the model; the numbers (bytes) are kept here for them.
    """

    def __init__(
        self, message: str = "", *, needed: int = 0, budget: float = 0.0, held: int = 0, budget_name: str = ""
    ) -> None:
        super().__init__(message)
        self.needed, self.budget, self.held = needed, budget, held
        self.budget_name = budget_name  # "" for the main budget, else the other budget's name ("gpu0")


class SnapshotMismatch(AssertionError):
    """A value is not what its snapshot recorded (or nothing is recorded): a failed check, not an error."""

    def _render_traceback_(self) -> list[str]:
        # IPython: the message says everything; the frames inside modelfix would only bury it.
        return [f"SnapshotMismatch: {self}"]


class _NotebookPackageMissing(ModelfixError):
    """``%load_ext modelfix`` without modelfix-jupyter, or the notebook runner without its ``run`` extra;
    IPython shows it as one line (its ``_render_traceback_`` protocol), not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"ModelfixError: {self}"]


_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
# The user[:password]@ of a URL (a mirror in HF_ENDPOINT, a proxy): up to the host's end, never past a /
_URL_CREDENTIALS_RE = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """Remove Hub tokens (the current ``HF_TOKEN`` and anything shaped like one) and the credentials
    of URLs (``https://user:password@mirror`` becomes ``https://***@mirror``)."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        text = text.replace(token, "***")
    return _URL_CREDENTIALS_RE.sub(r"\1***@", _TOKEN_RE.sub("hf_***", text))
