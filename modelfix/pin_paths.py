"""What a pinned path may be: a name in a view folder, safe to print and to create in a shared cache.

A pin's ``path`` (and a legacy part's ``join``) becomes a file name under
``views/<key>/`` (see :mod:`modelfix.views`), so it is checked where it enters: read from the
lockfile, listed by a server while locking, written in a source string::

    check_relative_path(path, what)     relative and canonical (no ``.``, ``..``, empty segments,
                                        ``\\``, drive letters), no control characters, not a name
                                        modelfix writes itself, short enough for any file system
    check_view_names(files, what)       no two pins of one entry land on one file of its view,
                                        as a case-insensitive, Unicode-normalizing file system
                                        compares names; no file where another needs a folder

Each failure is a :class:`~modelfix.errors.LockError` that says where the path came from (``what``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from .errors import LockError

__all__ = ["MAX_PATH_BYTES", "RESERVED_NAMES", "check_relative_path", "check_view_names"]

# A pinned path is a file name in a view under the cache root: far below PATH_MAX (4096) with room
# for the root, and NAME_MAX (255 bytes) per component, so that no path fails with ENAMETOOLONG later.
MAX_PATH_BYTES = 1024
_MAX_NAME_BYTES = 255
# What modelfix itself writes in a view folder (its manifest) or beside it in views/ (a view being
# built or replaced): a pin of that name would land on modelfix's own file.
RESERVED_NAMES = (".modelfix.json",)
_RESERVED_PREFIXES = (".tmp-", ".old-")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc: what a terminal would obey if printed


def check_relative_path(path: object, what: object) -> str:
    """``path`` if it can name a file in a view, else a LockError saying why (``what`` says where it came from).

    A pinned path is relative, in canonical form (no ``.``, ``..`` or empty segments, so that two
    spellings never name one file), free of control characters (which a terminal would obey
    when the path is printed), not a name modelfix writes itself (``.modelfix.json``,
    ``.tmp-*``, ``.old-*``) and short enough for any file system.
    """
    if not isinstance(path, str) or not path:
        raise LockError(f"{what}: a file path must be a non-empty string, got {path!r}.")
    if control := _CONTROL_RE.search(path):
        raise LockError(f"{what}: unsafe file path {path!r}: it holds the control character {control[0]!r}.")
    if path.startswith(("/", "~")) or "\\" in path or re.match(r"[A-Za-z]:", path):
        raise LockError(f"{what}: unsafe file path {path!r} (absolute or containing '..').")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise LockError(
            f"{what}: file path {path[:60]!r}... is longer than {MAX_PATH_BYTES} bytes, "
            "more than a cache folder can hold."
        )
    for part in path.split("/"):
        if part == "":
            raise LockError(f"{what}: unsafe file path {path!r}: an empty segment ('//' or a '/' at an end).")
        if part in (".", ".."):
            raise LockError(f"{what}: unsafe file path {path!r}: a {part!r} segment (absolute or containing '..').")
        if part in RESERVED_NAMES or part.startswith(_RESERVED_PREFIXES):
            raise LockError(f"{what}: file path {path!r} uses {part!r}, a name reserved for modelfix's own files.")
        if len(part.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
            raise LockError(f"{what}: file path {path!r} has a name longer than {_MAX_NAME_BYTES} bytes.")
    return path


def check_view_names(files: Sequence[tuple[str, str | None]], what: object) -> None:
    """Refuse pins ``(path, join)`` of one entry that would be one file of its view (``what`` names the entry).

    A file shows in the view under its ``join`` (legacy parts, which share it) or its path. Names
    compare as a case-insensitive, Unicode-normalizing file system (macOS, Windows) compares
    them, so a lockfile works everywhere; a file whose name another one needs as a folder is
    refused too.
    """
    shown: dict[str, int] = {}  # folded name in the view -> first pin showing it
    parts: dict[str, int] = {}  # folded path of a legacy part -> its pin
    for i, (path, join) in enumerate(files):
        name = join or path
        j = shown.setdefault(_folded(name), i)
        if j != i and not (join is not None and files[j][1] == join):
            raise _collision(what, files[j][1] or files[j][0], j, name, i)
        if join is not None and (k := parts.setdefault(_folded(path), i)) != i:
            raise _collision(what, files[k][0], k, path, i)
    for folded, i in shown.items():
        segments = folded.split("/")
        for depth in range(1, len(segments)):
            folder = shown.get("/".join(segments[:depth]))
            if folder is not None:
                first, second = (files[folder][1] or files[folder][0]), (files[i][1] or files[i][0])
                raise LockError(
                    f"{what}: two pins land on one file of the view: {first!r} (files[{folder}]) is a file, and "
                    f"{second!r} (files[{i}]) needs it to be a folder. Re-pin with `modelfix lock --upgrade`."
                )


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def _collision(what: object, first: str, j: int, second: str, i: int) -> LockError:
    return LockError(
        f"{what}: two pins land on one file of the view: {first!r} (files[{j}]) and {second!r} (files[{i}]). "
        "Give each pinned file a path of its own, or re-pin with `modelfix lock --upgrade`."
    )
