"""Where a table, key or array item starts in a lockfile's text: the ``path:line`` of error messages.

The index is built in one pass over the lines, on the first lookup, that is on the first
error: a valid lockfile is read without looking up a single line, and an invalid one scans
its lines once, however many entries it has (a lookup per entry once made ``lock --check``
quadratic: 60 s for 16,000 entries)::

    [models.chat]                  headers["chat"]
    source = "org/repo:Q4_K_M"     keys["chat", "source"]
    files = [                      keys["chat", "files"]
        {path = "a.gguf", ...},    items["chat", "files"][0]
        {path = "b.gguf", ...},    items["chat", "files"][1]
    ]
    [routing]                      keys[None, "routing"]
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["Where", "Lines"]


class Where:
    """``path:line`` of a table, key or array item, for error messages.

    The line index (:class:`Lines`) is built on the first call, that is on the first error: a
    valid lockfile is read without looking up a single line, and an invalid one scans its lines
    once, however many entries it has.
    """

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self._lines: Lines | None = None

    def __call__(self, name: str | None = None, key: str | None = None, index: int | None = None) -> str:
        if self._lines is None:
            self._lines = Lines(self.path, self.text)
        return self._lines.where(name, key, index)


# A table header ([models.chat], [models."a b"], [[routing.rules]]), a `key =` line, and an inline
# table opening a line or following `[` or `,` (`files = [{...}, {...}]` or one per line).
_HEADER_RE = re.compile(
    r"\s*\[\[?\s*(?P<table>[A-Za-z0-9_-]+|\"[^\"]*\")\s*(?:\.\s*(?P<sub>[A-Za-z0-9_.-]+|\"(?:[^\"\\]|\\.)*\"))?"
)
_KEY_RE = re.compile(r"\s*(?P<key>[A-Za-z0-9_-]+|\"[^\"]*\")\s*=(?P<value>.*)")
_INLINE_TABLE_RE = re.compile(r"(?:^|[\[,])\s*\{")


class Lines:
    """One pass over the lockfile's lines: where each ``[models.NAME]``, each key in it and each
    inline table of its arrays (``files``) starts."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.headers: dict[str | None, int] = {None: 0}  # model name (None: the top level) -> header line
        self.keys: dict[tuple[str | None, str], int] = {}  # (model, key) -> line; top-level [tables] too
        self.items: dict[tuple[str | None, str], list[int]] = {}  # (model, array key) -> line of each inline table
        self._model: str | None = None
        self._array: tuple[str | None, str] | None = None
        self._line = 0
        for line in text.splitlines():
            self._scan(line)
            self._line += 1

    def _scan(self, line: str) -> None:
        if (
            line.lstrip().startswith("[")
            and (header := _HEADER_RE.match(line))
            and "=" not in line.split("#", maxsplit=1)[0]
        ):
            table, sub = _unquote(header["table"]), header["sub"]
            self._array = None
            if table == "models" and sub is not None:
                self._model = _unquote(sub)
                self.headers.setdefault(self._model, self._line)
            else:
                self._model = None
                self.keys.setdefault((None, table), self._line)
            return
        rest = line
        if found := _KEY_RE.match(line):
            key = _unquote(found["key"])
            self.keys.setdefault((self._model, key), self._line)
            self._array = (self._model, key) if found["value"].lstrip().startswith("[") else None
            rest = found["value"]
            if self._array is not None:
                self.items.setdefault(self._array, [])
        if self._array is not None:
            self.items[self._array] += [self._line] * len(_INLINE_TABLE_RE.findall(rest.lstrip()))

    def where(self, name: str | None, key: str | None, index: int | None) -> str:
        start = self.headers.get(name)
        if start is None:
            return str(self.path)
        line = None
        if key is not None:
            line = self.keys.get((name, key))
            items = self.items.get((name, key), [])
            if line is not None and index is not None and index < len(items):
                line = items[index]
        return f"{self.path}:{(start if line is None else line) + 1}"


def _unquote(name: str) -> str:
    if len(name) > 1 and name[0] == name[-1] == '"':
        try:
            return json.loads(name)  # TOML's basic-string escapes are JSON's, near enough for a name
        except ValueError:
            return name[1:-1]
    return name
