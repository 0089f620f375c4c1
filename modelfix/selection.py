"""Choosing files from a repository listing, the way llama.cpp's ``-hf`` does.

Pure functions over a list of repository paths: no network, no I/O, so the
rules can be read and tested in one place.

* **Model candidates** are ``*.gguf`` files and legacy multi-part uploads
  (``x.gguf.part1of2``, ``x.gguf-split-a``), minus files that are never
  models: names containing ``mmproj`` or ``imatrix``, or starting with
  ``mtp-`` / ``eagle3-``.
* **Groups**: split parts ``NAME-0000K-of-0000N.gguf`` with the same ``NAME``
  and ``N`` form one model (loaded from part 1); legacy parts of the same
  ``x.gguf`` form one model that must be concatenated in part order.
* **Tag**: a group matches ``TAG`` when its file name contains ``TAG``
  followed by ``.`` or ``-`` (case-insensitive). With no tag: ``Q4_K_M``,
  then ``Q8_0``, then the first model in listing order. Unlike llama.cpp,
  which silently takes the first, a tag matching two different models is an
  error: a lockfile must not depend on listing order.
* **mmproj**: the one in the deepest folder shared with the model, then an
  exact tag match, then the closest bit width.
* ``preset.ini`` at the repository root travels with the model.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import SourceError

__all__ = [
    "ModelGroup",
    "Selection",
    "model_groups",
    "select",
    "select_file",
    "split_siblings",
    "DEFAULT_TAGS",
]

DEFAULT_TAGS = ("Q4_K_M", "Q8_0")

# ASCII digits only: \d also matches other scripts' digits ("００００1"), which int() reads as 1 too.
SPLIT_RE = re.compile(r"(?P<prefix>.+)-(?P<index>[0-9]{5})-of-(?P<count>[0-9]{5})\.gguf")
_LEGACY_PART_RE = re.compile(r"(?P<base>.+\.gguf)\.part(?P<index>[0-9]+)of(?P<count>[0-9]+)")
_LEGACY_SPLIT_RE = re.compile(r"(?P<base>.+\.gguf)-split-(?P<letter>[a-z]+)")
_NEVER_MODELS = ("mmproj", "imatrix")
_NEVER_PREFIXES = ("mtp-", "eagle3-")
_BITS_RE = re.compile(r"(?:^|[^a-z0-9])(?:i?q(\d+)|bf(16)|f(16|32))", re.IGNORECASE)


@dataclass(frozen=True)
class ModelGroup:
    """One loadable model: a single file, a split set, or legacy parts to join.

    ``key`` is the name used for tag matching and display; ``parts`` are in
    load (or concatenation) order; ``join`` is the file name the legacy parts
    are concatenated into, else ``None``.
    """

    key: str
    parts: tuple[str, ...]
    join: str | None = None

    @property
    def first(self) -> str:
        return self.parts[0]


@dataclass(frozen=True)
class Selection:
    """What a source resolves to inside one repository listing."""

    model: ModelGroup
    mmproj: str | None
    preset: str | None


def _is_model_name(path: str) -> bool:
    name = posixpath.basename(path).lower()
    if any(word in name for word in _NEVER_MODELS) or name.startswith(_NEVER_PREFIXES):
        return False
    return name.endswith(".gguf") or bool(_LEGACY_PART_RE.fullmatch(name) or _LEGACY_SPLIT_RE.fullmatch(name))


def model_groups(paths: list[str], *, repo: str = "") -> list[ModelGroup]:
    """Group the model files of a listing, in the order their first part appears."""
    groups: dict[tuple[str, ...], list[tuple[int, str]]] = {}
    kinds: dict[tuple[str, ...], str | None] = {}
    for path in paths:
        if not _is_model_name(path):
            continue
        folder, name = posixpath.split(path)
        key: tuple[str, ...]
        if m := SPLIT_RE.fullmatch(name):
            key = ("split", folder, m["prefix"], m["count"])
            index, join = int(m["index"]), None
        elif m := _LEGACY_PART_RE.fullmatch(name):
            key = ("legacy", folder, m["base"], m["count"])
            index, join = int(m["index"]), posixpath.join(folder, m["base"])
        elif m := _LEGACY_SPLIT_RE.fullmatch(name):
            key = ("legacy", folder, m["base"], "")
            index, join = _letters_to_index(m["letter"]), posixpath.join(folder, m["base"])
        else:
            key, index, join = ("file", path), 0, None
        groups.setdefault(key, []).append((index, path))
        kinds[key] = join
    result = []
    for key, members in groups.items():
        _check_parts(key, members, f" in {repo}" if repo else "")
        parts = tuple(p for _, p in sorted(members))
        display = kinds[key] or parts[0]
        result.append(ModelGroup(key=display, parts=parts, join=kinds[key]))
    return result


def _check_parts(key: tuple[str, ...], members: list[tuple[int, str]], where: str) -> None:
    """A split set must have each part once, from 1 to its count: llama.cpp loads them by number."""
    if key[0] != "split":
        return
    seen: dict[int, str] = {}
    for index, path in members:
        if index in seen:
            raise SourceError(
                f"the listing{where} has two files for part {index} of {int(key[3])} of one split set: "
                f"{seen[index]!r} and {path!r}. A split set must have each part once; name one file "
                "explicitly (hf://ORG/REPO/path/file.gguf) or fix the repository."
            )
        seen[index] = path
    count = int(key[3])
    missing = [i for i in range(1, count + 1) if i not in seen]
    if missing or max(seen) > count:
        name = posixpath.join(key[1], f"{key[2]}-0000K-of-{key[3]}.gguf")
        what = f"lacks part {missing[0]} of {count}" if missing else f"has a part beyond {count}"
        raise SourceError(
            f"split set {name}{where} {what}: it cannot be loaded. Fix the repository or pick another tag."
        )


def _letters_to_index(letters: str) -> int:
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index


def _tag_re(tag: str) -> re.Pattern[str]:
    return re.compile(re.escape(tag) + r"[.-]", re.IGNORECASE)


def _matching(groups: list[ModelGroup], tag: str) -> list[ModelGroup]:
    pattern = _tag_re(tag)
    return [g for g in groups if pattern.search(posixpath.basename(g.key))]


def select(paths: list[str], tag: str | None, *, repo: str = "") -> Selection:
    """Choose the model (and its mmproj and preset) for ``tag`` from a listing.

    Raises :class:`SourceError` listing what exists when nothing matches, or
    listing the candidates when the tag is ambiguous.
    """
    groups = model_groups(paths, repo=repo)
    where = f" in {repo}" if repo else ""
    if not groups:
        raise SourceError(f"no GGUF model files{where}; the repository has: {_preview(paths)}")
    if tag:
        matches = _matching(groups, tag)
        if not matches:
            raise SourceError(f"tag {tag!r} matches no model file{where}. Available: {_available(groups)}")
        if len(matches) > 1:
            listed = "\n  ".join(g.key for g in matches)
            raise SourceError(
                f"tag {tag!r} matches {len(matches)} different models{where}:\n  {listed}\n"
                f"Name one file explicitly: hf://{repo or 'ORG/REPO'}/{matches[0].first}"
            )
        chosen, used_tag = matches[0], tag
    else:
        chosen, used_tag = groups[0], None
        for default in DEFAULT_TAGS:
            matches = _matching(groups, default)
            if matches:
                chosen, used_tag = matches[0], default
                break
    return Selection(
        model=chosen,
        mmproj=_pick_mmproj(paths, chosen, used_tag),
        preset="preset.ini" if "preset.ini" in paths else None,
    )


def select_file(paths: list[str], path: str, *, repo: str = "") -> ModelGroup:
    """The group an explicitly named file belongs to (a split set travels whole)."""
    for group in model_groups(paths, repo=repo):
        if path in group.parts:
            return group
    if path in paths:
        if posixpath.basename(path).lower().endswith(".gguf"):
            return ModelGroup(key=path, parts=(path,))  # e.g. an mmproj named on purpose
        raise SourceError(
            f"file {path!r} in {repo or 'the repository'} is not a GGUF model file. "
            f"Model files there: {_available(model_groups(paths))}"
        )
    raise SourceError(
        f"file {path!r} does not exist in {repo or 'the repository'}. "
        f"Model files there: {_available(model_groups(paths))}"
    )


def split_siblings(name: str, exists: Callable[[str], bool]) -> list[str]:
    """All parts of the split set ``name`` belongs to, or ``[name]``.

    ``exists(candidate) -> bool`` probes for a sibling; used for URL and
    path sources, which have no listing.
    """
    folder, base = posixpath.split(name)
    m = SPLIT_RE.fullmatch(base)
    if not m:
        return [name]
    count = int(m["count"])
    return [
        posixpath.join(folder, f"{m['prefix']}-{i:05d}-of-{m['count']}.gguf")
        for i in range(1, count + 1)
        if i == int(m["index"]) or exists(posixpath.join(folder, f"{m['prefix']}-{i:05d}-of-{m['count']}.gguf"))
    ]


def _bits(name: str) -> int | None:
    m = _BITS_RE.search(posixpath.basename(name))
    if not m:
        return None
    return int(next(g for g in m.groups() if g))


def _pick_mmproj(paths: list[str], model: ModelGroup, tag: str | None) -> str | None:
    candidates = [p for p in paths if "mmproj" in posixpath.basename(p).lower() and p.endswith(".gguf")]
    if not candidates:
        return None
    model_dir = posixpath.dirname(model.first).split("/")
    model_bits = _bits(model.key) if tag is None else _bits(tag)

    def shared_depth(path: str) -> int:
        depth = 0
        for a, b in zip(posixpath.dirname(path).split("/"), model_dir, strict=False):
            if a != b:
                break
            depth += 1
        return depth

    def score(path: str) -> tuple[int, int, int, int]:
        name = posixpath.basename(path)
        # 2: the tag as a whole word ("F16" in "x-f16.gguf"), 1: inside a longer one ("x-bf16.gguf")
        tag_hit = 0
        if tag and _tag_re(tag).search(name):
            tag_hit = 2 if re.search(r"(?<![a-z0-9])" + _tag_re(tag).pattern, name, re.IGNORECASE) else 1
        bits = _bits(path)
        distance = abs(bits - model_bits) if bits is not None and model_bits is not None else 99
        # at equal width, f16 is the 16-bit projector (bf16 only on a tag match)
        not_f16 = 0 if re.search(r"(?<![a-z0-9])f16[.-]", name, re.IGNORECASE) else 1
        return (-shared_depth(path), -tag_hit, distance, not_f16)

    return min(candidates, key=lambda p: (score(p), p))


def _available(groups: list[ModelGroup]) -> str:
    return ", ".join(g.key for g in groups[:20]) + (" ..." if len(groups) > 20 else "")


def _preview(paths: list[str]) -> str:
    return ", ".join(paths[:10]) + (" ..." if len(paths) > 10 else "") if paths else "(nothing)"
