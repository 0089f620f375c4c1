r"""Pick a model for a request by the lockfile's ``[routing]`` rules.

::

    [routing]
    default = "chat"
    rules = [
      { pattern = '(?i)\b(def|class|import)\b', model = "coder" },  # '...': TOML literal string
      { pattern = '(?i)^embed:', model = "embedder" },
    ]

Rules are tried in order; the first whose regular expression is found
anywhere in the text (``re.search``) names the model, else ``default``.
Patterns are case-sensitive unless they say ``(?i)``. The lockfile checks on
read that every pattern compiles and every model exists, so routing itself
only fails when nothing matches and there is no default.
"""

from __future__ import annotations

import functools
import os
import re

from .errors import LockError
from .lockfile import Lockfile

__all__ = ["route"]


def route(text: str, lock: Lockfile | str | os.PathLike[str] | None = None) -> str:
    """The name of the model that should answer ``text``."""
    lockfile = lock if isinstance(lock, Lockfile) else Lockfile.find(lock)
    for rule in lockfile.routing:
        if _compiled(rule.pattern).search(text):
            return rule.model
    if lockfile.routing_default is not None:
        return lockfile.routing_default
    if not lockfile.routing:
        raise LockError(
            f"{lockfile.path} has no [routing] table. Add rules and a default, e.g.\n"
            '[routing]\ndefault = "chat"\nrules = [{ pattern = "(?i)code", model = "coder" }]'
        )
    raise LockError(
        f"no [routing] rule in {lockfile.path} matches {text[:60]!r} and there is no default. "
        'Add `default = "NAME"` under [routing].'
    )


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
