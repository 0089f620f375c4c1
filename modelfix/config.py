"""Cache settings, resolved once from arguments, then the environment, then defaults.

Read when used, never at import: a test can set ``MODELFIX_CACHE_DIR`` and
the next call sees it. Front ends pass their options (``--cache-dir``,
``--modelfix-offline``...) as arguments, which win over the environment.

=========================  ==========================================
environment                meaning
=========================  ==========================================
``MODELFIX_CACHE_DIR``     store root (default: platformdirs cache dir)
``MODELFIX_CACHE_MAX_SIZE`` cap on the store (``50GB``, bytes, ``inf``)
``MODELFIX_OFFLINE``       ``1``: never touch the network
``HF_HUB_OFFLINE``         honoured the same way
``MODELFIX_REMOTE``        fsspec URL of a shared remote tier
=========================  ==========================================
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import final

from .errors import CacheError
from .eviction import parse_size

__all__ = ["CacheSettings", "env_flag"]

_TRUE = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


@final
@dataclass(frozen=True)
class CacheSettings:
    root: Path
    max_size: float = math.inf
    offline: bool = False
    remote: str | None = None

    @classmethod
    def resolve(
        cls,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        max_size: str | int | float | None = None,
        remote: str | None = None,
    ) -> CacheSettings:
        root = cache_dir or os.environ.get("MODELFIX_CACHE_DIR")
        if not root:
            import platformdirs

            root = platformdirs.user_cache_dir("modelfix", appauthor=False)
        if offline is None:
            offline = env_flag("MODELFIX_OFFLINE") or env_flag("HF_HUB_OFFLINE")
        raw_size = max_size if max_size is not None else os.environ.get("MODELFIX_CACHE_MAX_SIZE")
        try:
            size = parse_size(raw_size, "MODELFIX_CACHE_MAX_SIZE") if raw_size not in (None, "") else math.inf
        except ValueError as exc:
            raise CacheError(str(exc)) from None
        remote = remote if remote is not None else (os.environ.get("MODELFIX_REMOTE") or None)
        return cls(root=Path(root).expanduser().resolve(), max_size=size, offline=bool(offline), remote=remote)
