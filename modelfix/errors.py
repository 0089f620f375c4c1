"""The exceptions modelfix raises.

Every error a user can cause or meet is a ``ModelfixError``; its message names
the thing at fault (model, file, lockfile line) and the fix::

    ModelfixError
     ├── LockError          model-lock.toml is malformed, missing, unpinned or stale
     ├── SourceError        a source string or the repository it names is unusable
     │    └── AuthError     a private/gated repository without a valid token
     ├── NetworkError       the origin did not answer after retries
     ├── IntegrityError     bytes did not match their pin (never enter the store)
     ├── CacheError         the store cannot be written, or is over its cap
     ├── OfflineError       offline mode and something is not cached
     ├── SettingsError      an unknown or invalid load setting
     ├── MemoryBudgetError  a model does not fit in the pool's memory budget
     ├── BackendError       this llama.cpp build crashes on this CPU (the probe found it), or
     │                      the probe could not run
     └── SnapshotError      a snapshot file cannot be read or written, or a value cannot be stored

(A snapshot that does not match is not an error of modelfix's: it is a failed check,
:class:`modelfix.snapshots.SnapshotMismatch`, an ``AssertionError``.)

Tokens never appear in messages: build them with :func:`redact`.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "ModelfixError",
    "LockError",
    "SourceError",
    "AuthError",
    "NetworkError",
    "IntegrityError",
    "CacheError",
    "OfflineError",
    "SettingsError",
    "MemoryBudgetError",
    "BackendError",
    "SnapshotError",
    "redact",
]


class ModelfixError(Exception):
    """Base class: catch this to handle anything modelfix reports."""


class LockError(ModelfixError):
    """The lockfile is malformed, missing, unpinned or out of date."""


class SourceError(ModelfixError):
    """A source string, or the repository/file it points to, is unusable."""


class AuthError(SourceError):
    """The repository is private or gated and no valid token was given."""


class NetworkError(ModelfixError):
    """The origin kept failing after retries."""


class IntegrityError(ModelfixError):
    """Downloaded or cached bytes do not match their pin."""


class CacheError(ModelfixError):
    """The store cannot be written or cannot make room."""


class OfflineError(ModelfixError):
    """Offline mode is on and a needed file is not in the cache."""


class SettingsError(ModelfixError):
    """A load setting is unknown or has an invalid value."""


class MemoryBudgetError(ModelfixError):
    """A handle cannot fit in the pool's memory budget even after evicting."""


class BackendError(ModelfixError):
    """llama.cpp's CPU backend dies on this host (see :mod:`modelfix.probe`), or the probe could not run."""


class SnapshotError(ModelfixError):
    """A snapshot file is unreadable or cannot be written, or a value cannot be recorded in one."""


_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def redact(text: str) -> str:
    """Remove Hub tokens (the current ``HF_TOKEN`` and anything shaped like one)."""
    token = os.environ.get("HF_TOKEN")
    if token:
        text = text.replace(token, "***")
    return _TOKEN_RE.sub("hf_***", text)
