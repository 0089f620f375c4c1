"""Source strings and how each kind is resolved into pins.

Forms understood by the built-in plugin (``BuiltinSources``)::

    org/repo[:TAG][@REV]                Hub repository, file chosen like llama.cpp -hf
    hf://org/repo[:TAG][@REV]           the same, explicit scheme
    hf://org/repo[@REV]/path/x.gguf     one named file of a Hub repository
    https://host/x.gguf, s3://b/x.gguf  any fsspec URL (hashed by streaming)
    file:///abs/x.gguf, ./x.gguf, /abs  local files (relative to the lockfile)

A URL is read through :mod:`modelfix.transports` with the fetch policy's
retries: a server error or a refused connection is tried again with backoff,
then reported as a :class:`NetworkError`; only a 404 (no such key) means
"no such file". Local paths are kept as plain paths, never ``file://`` URLs,
which fsspec would not decode (a space, an accent).

A :class:`Source` answers two questions: ``resolve()`` (network allowed) gives
the pins; ``locate(pin, revision)`` says where a pinned file's bytes live, so
the fetcher needs nothing but the lockfile. Hub pins come from the Hub's LFS
metadata (the sha256 it publishes), so locking downloads no model bytes; only
small non-LFS files such as ``preset.ini`` are read to hash them.

Other schemes are plugins: implement ``modelfix_parse_source`` (see
``modelfix.hooks``) and return an object with this protocol.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .config import env_flag
from .errors import AuthError, NetworkError, OfflineError, SourceError, SourceMissing, redact
from .hooks import hookimpl, plugin_manager
from .lockfile import MAX_FILE_SIZE, FilePin, Pins
from .pin_paths import check_relative_path
from .retry import FetchPolicy, Transient, retry_after, with_retries
from .selection import select, select_file, split_siblings
from .transports import Location, transport_for

T = TypeVar("T")

__all__ = [
    "Source",
    "Location",
    "HubSource",
    "FsspecSource",
    "parse_source",
    "hub_endpoint",
    "hub_token",
    "BuiltinSources",
    "source_for",
    "shared_lookups",
]

_CHUNK = 8 * 1024 * 1024
_REPO_PART = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?"
_REPO_RE = re.compile(rf"{_REPO_PART}/{_REPO_PART}")  # every check is a fullmatch: `$` passes a trailing newline
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TAG_RE = re.compile(r"[\w.-]+", re.ASCII)
_SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_REF_SLOT = "\x00ref\x00"  # stands in for a refs/pr/N revision while a Hub source is parsed


@runtime_checkable
class Source(Protocol):
    """What a source string becomes: the built-in :class:`HubSource` and :class:`FsspecSource`, or a plugin's."""

    @property
    def text(self) -> str:
        """The source string, as written in the lockfile."""

    @property
    def kind(self) -> str:
        """A short name of the scheme (``hub``, ``url``, a plugin's own)."""

    def resolve(self) -> Pins: ...

    def locate(self, pin: FilePin, revision: str | None) -> Location: ...

    def describe(self) -> dict[str, str]: ...


def parse_source(text: str, base_dir: Path | None = None) -> Source:
    """Turn a source string into a :class:`Source`: every plugin is asked first, then the built-in forms."""
    text = text.strip()
    base_dir = base_dir or Path.cwd()
    source = plugin_manager().hook.modelfix_parse_source(text=text, base_dir=base_dir)
    if source is None:
        source = _BUILTIN.modelfix_parse_source(text=text, base_dir=base_dir)
    if source is None:
        raise SourceError(
            f"cannot understand source {text!r}. Expected ORG/REPO[:TAG][@REVISION], "
            "hf://ORG/REPO/path/file.gguf, a URL such as https://… or s3://…, or a local path."
        )
    return source


def hub_endpoint() -> str:
    """``HF_ENDPOINT``, read at call time (tests point it at a local hub)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_token() -> str | None:
    """The Hub token, found where huggingface_hub finds it, at call time.

    ``HF_TOKEN``, else (unless ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` is set) the token
    ``hf auth login`` saved: locking and fetching must agree on it, or a private
    repository would lock and then fail to sync. It is sent to the Hub's origin
    only and never written anywhere.
    """
    token = os.environ.get("HF_TOKEN", "").strip()
    if token or env_flag("HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        return token or None
    from huggingface_hub import get_token

    return get_token() or None


# --- the Hub ---------------------------------------------------------------

_LOOKUPS: ContextVar[dict[tuple[str, ...], Any] | None] = ContextVar("modelfix_hub_lookups", default=None)


@contextmanager
def shared_lookups() -> Iterator[None]:
    """Inside the block, Hub sources ask the Hub once per repository and revision.

    A lockfile often pins several quantizations of one repository; one ``lock``
    run then needs the commit, the file tree and ``preset.ini`` only once. The
    memo lives for the block alone: the next run sees new commits.
    """
    token = _LOOKUPS.set({})
    try:
        yield
    finally:
        _LOOKUPS.reset(token)


def _looked_up(key: tuple[str, ...], ask: Callable[[], Any]) -> Any:
    memo = _LOOKUPS.get()
    if memo is None:
        return ask()
    if key not in memo:
        memo[key] = ask()  # a failure raises before anything is remembered
    return memo[key]


@dataclass(frozen=True)
class HubSource:
    """A Hub repository with a quantization tag, or one named file."""

    text: str
    repo: str
    tag: str | None = None
    file: str | None = None
    revision: str | None = None
    kind: str = "hub"
    needs_network = True  # resolving asks the Hub (offline locking refuses it)

    @classmethod
    def parse(cls, text: str) -> HubSource:
        body = text[len("hf://") :] if text.startswith("hf://") else text
        body = body.removeprefix("models/")
        # A pull-request or convert ref (@refs/pr/1) holds slashes of its own: set it aside so they
        # are not read as ORG/REPO/path separators.
        special = re.search(r"@(refs/[^/:@]+/[^/:@]+)", body)
        if special:
            body = body[: special.start(1)] + _REF_SLOT + body[special.end(1) :]
        repo_part, _, rest = body.partition("/")
        name_part, slash, path = rest.partition("/")
        file: str | None = path
        revision = None
        named_file = not name_part.count(":") and ("@" not in name_part or path.lower().endswith(".gguf"))
        if text.startswith("hf://") and slash and file and named_file:
            # hf://org/repo[@rev]/path/file.gguf; a branch with a slash is written @feature%2Fx here,
            # as huggingface_hub's HfFileSystem writes it: its own slash could not be told from the path's
            # (hf://org/repo@feature/x[:TAG], naming no .gguf file, is the branch)
            name, _, revision = name_part.partition("@")
            revision = unquote(revision)
            repo, tag = f"{repo_part}/{name}", None
            file = check_relative_path(file, f"source {text!r}")
        else:
            # org/repo[@rev][:TAG][@rev]; revision may contain '/' (refs/pr/1, feature/x)
            m = re.fullmatch(r"(?P<repo>[^/@:]+/[^/@:]+)(?:@(?P<r1>[^:]+))?(?::(?P<tag>[^@]+))?(?:@(?P<r2>.+))?", body)
            if not m or (m["r1"] and m["r2"]):
                raise SourceError(f"bad Hub source {text!r}: expected ORG/REPO[:TAG][@REVISION].")
            repo, tag, revision, file = m["repo"], m["tag"], m["r1"] or m["r2"], None
        if not _REPO_RE.fullmatch(repo) or "--" in repo or ".." in repo or len(repo) > 96:
            raise SourceError(
                f"bad repository id {repo!r} in source {text!r}: expected ORG/REPO made of "
                "letters, digits, '-', '_' and '.' (e.g. bartowski/Qwen2.5-0.5B-Instruct-GGUF)."
            )
        if tag is not None and not _TAG_RE.fullmatch(tag):
            raise SourceError(f"bad tag {tag!r} in source {text!r}: expected a quantization like Q4_K_M.")
        if special and revision == _REF_SLOT:
            revision = special[1]
        return cls(text=text, repo=repo, tag=tag, file=file, revision=revision or None)

    def describe(self) -> dict[str, str]:
        info = {"repo": self.repo}
        if self.tag:
            info["tag"] = self.tag
        if self.file:
            info["file"] = self.file
        return info

    def locate(self, pin: FilePin, revision: str | None) -> Location:
        rev = revision or self.revision or "main"
        options: dict[str, Any] = {"endpoint": hub_endpoint()}
        if token := hub_token():
            options["token"] = token
        return Location(
            url=f"{hub_endpoint()}/{self.repo}/resolve/{quote(rev, safe='')}/{quote(pin.path)}",
            storage_options=options,
        )

    def resolve(self) -> Pins:
        from . import hub_api

        endpoint, token, wanted = hub_endpoint(), hub_token(), self.revision or "main"
        where = (endpoint, self.repo)
        commit = _looked_up(
            ("commit", *where, wanted),
            lambda: self._call(lambda: hub_api.commit(endpoint, self.repo, wanted, token), wanted),
        )
        if not isinstance(commit, str) or not _SHA1_RE.fullmatch(commit):
            raise SourceError(f"{self.repo}: the Hub gave no commit for revision {wanted!r}.")
        entries = _looked_up(
            ("tree", *where, commit),
            lambda: self._call(lambda: hub_api.tree(endpoint, self.repo, commit, token), wanted),
        )
        for entry in entries:
            check_relative_path(entry.get("path"), f"{self.repo}@{commit[:12]}: the server listed file")
        by_path = {e["path"]: e for e in entries}
        paths = list(by_path)
        if self.file:
            group = select_file(paths, self.file, repo=self.repo)
            chosen = [(p, "model", group.join) for p in group.parts]
        else:
            selection = select(paths, self.tag, repo=self.repo)
            chosen = [(p, "model", selection.model.join) for p in selection.model.parts]
            if selection.mmproj:
                chosen.append((selection.mmproj, "mmproj", None))
            if selection.preset:
                chosen.append((selection.preset, "preset", None))
        files = tuple(self._pin(by_path[p], role, join, commit) for p, role, join in chosen)
        return Pins(revision=commit, files=files, pinned_from=self.text)

    def _pin(self, entry: dict[str, Any], role: str, join: str | None, commit: str) -> FilePin:
        path, lfs = entry["path"], entry.get("lfs")
        if isinstance(lfs, dict):
            sha, size = lfs.get("oid", lfs.get("sha256")), lfs.get("size")
        else:
            # Plain git files (preset.ini) have no published sha256: hash their bytes.
            key = ("plain", hub_endpoint(), self.repo, commit, path)
            sha, size = _looked_up(key, lambda: self._hash_plain(path, entry.get("size"), commit))
        if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha.lower()):
            raise SourceError(f"{self.repo}@{commit[:12]}: the server listed {path!r} without a valid sha256.")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_SIZE:
            raise SourceError(f"{self.repo}@{commit[:12]}: the server listed {path!r} with size {size!r}.")
        return FilePin(path=path, size=size, sha256=sha.lower(), role=role, join=join)

    def _hash_plain(self, path: str, size: Any, commit: str) -> tuple[str, int]:
        """sha256 of a non-LFS file, streamed: never more than the size its listing declares."""
        from . import hub_api

        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= hub_api.MAX_ANSWER_BYTES:
            raise SourceError(f"{self.repo}@{commit[:12]}: the server listed plain file {path!r} with size {size!r}.")
        url = self.locate(FilePin(path, 0, "0" * 64), commit).url
        return self._call(lambda: hub_api.plain_file(url, size, hub_token(), self.repo, path), commit)

    def _call(self, fn: Callable[[], T], revision: str) -> T:
        """Run a Hub call, retrying what a retry can fix (5xx, 429, resets), with backoff.

        huggingface_hub does not retry its API calls (``model_info``, the tree listing), so a
        busy Hub or a flaky proxy would otherwise fail a whole ``modelfix lock``.
        """
        return with_retries(lambda: self._once(fn, revision), f"{self.repo}: ", hub_endpoint())

    def _once(self, fn: Callable[[], T], revision: str) -> T:
        """Run a Hub call once, turning the client's errors into ours (no tokens, with a fix)."""
        from huggingface_hub import errors as hf

        try:
            return fn()
        except hf.GatedRepoError:
            raise AuthError(
                f"{self.repo} is gated: accept its terms on the Hub, then log in with `hf auth login` or set "
                "HF_TOKEN to a token of that account."
            ) from None
        except hf.RepositoryNotFoundError:
            if hub_token():
                raise SourceError(
                    f"repository {self.repo!r} was not found at {hub_endpoint()} (or your Hub token has no access "
                    f"to it). Check the name in source {self.text!r}."
                ) from None
            raise AuthError(
                f"repository {self.repo!r} was not found at {hub_endpoint()}. If it is private, "
                "log in with `hf auth login` or set HF_TOKEN to a token with read access; otherwise check the name."
            ) from None
        except hf.RevisionNotFoundError:
            raise SourceError(
                f"revision {revision!r} does not exist in {self.repo}. "
                "Use a branch, tag or full commit sha that exists."
            ) from None
        except hf.RemoteEntryNotFoundError as exc:
            raise SourceError(f"{self.repo}@{revision}: {redact(str(exc)).splitlines()[0]}") from None
        except hf.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            said = redact(str(getattr(exc, "server_message", None) or "").strip())
            answer = f"the Hub answered HTTP {status}" + (f" ({said})" if said else "")
            if status == 401 and hub_token():
                raise AuthError(
                    f"{self.repo}: {answer}: your Hub token was refused (revoked or expired). Set HF_TOKEN to a "
                    "valid token or log in again with `hf auth login`."
                ) from None
            if status == 403:
                answer += "; check that your Hub token's account may read this repository"
            if status == 429 or status >= 500:
                raise Transient(answer, retry_after(exc.response.headers)) from None
            raise NetworkError(f"{self.repo}: {answer}") from None
        except hf.OfflineModeIsEnabled:
            raise OfflineError(
                f"{self.repo}: huggingface_hub is in offline mode (HF_HUB_OFFLINE=1 when it was imported), "
                "so the Hub cannot be asked. Unset HF_HUB_OFFLINE to pin this model."
            ) from None
        except (OSError, ConnectionError) as exc:
            raise Transient(f"cannot reach {hub_endpoint()}: {redact(str(exc))}") from None
        except Exception as exc:  # httpx2 transport errors have no common stdlib base
            if type(exc).__module__.startswith(("httpx", "httpcore")):
                raise Transient(f"cannot reach {hub_endpoint()}: {type(exc).__name__}: {redact(str(exc))}") from None
            raise


# --- fsspec URLs and local paths -------------------------------------------


@dataclass(frozen=True)
class FsspecSource:
    """One file (or split set) at an fsspec URL or a local path, pinned by hashing.

    ``url`` is a plain absolute path for the built-in local forms; a plugin's
    ``file://`` URL is percent-decoded here (:func:`_local_path`).
    """

    text: str
    url: str
    kind: str = "url"

    @property
    def needs_network(self) -> bool:
        return _local_path(self.url) is None

    def describe(self) -> dict[str, str]:
        return {"url": self.url}

    def locate(self, pin: FilePin, revision: str | None) -> Location:
        local = _local_path(self.url)
        if local is not None:
            return Location(url=os.path.join(os.path.dirname(local), pin.path))
        where, query = _split_query(self.url)
        return Location(url=posixpath.join(posixpath.dirname(where), pin.path) + query)

    def resolve(self) -> Pins:
        local = _local_path(self.url)
        if local is not None:
            return self._resolve_local(local)
        sizes: dict[str, int] = {}

        def exists(url: str) -> bool:
            size = self._retrying(url, _size_of)
            if size is not None:
                sizes[url] = size
            return size is not None

        where, query = _split_query(self.url)
        if not exists(self.url):
            raise SourceError(f"source {self.text!r}: no such file ({self.url}).")
        parts = [url + query for url in split_siblings(where, lambda url: exists(url + query))]
        files = tuple(self._pin(_split_query(url)[0], *self._hash_remote(url, sizes[url])) for url in parts)
        return Pins(revision=None, files=files, pinned_from=self.text)

    def _resolve_local(self, path: str) -> Pins:
        if not os.path.isfile(path):
            raise SourceError(f"source {self.text!r}: no such file ({path}).")
        try:
            files = tuple(self._pin(p, *_hash_local(p)) for p in split_siblings(path, os.path.isfile))
        except OSError as exc:
            where = exc.filename or path
            raise SourceError(f"source {self.text!r}: cannot read {where}: {exc.strerror or exc}.") from None
        return Pins(revision=None, files=files, pinned_from=self.text)

    def _hash_remote(self, url: str, size: int) -> tuple[str, int]:
        """sha256 and size of the file at ``url``; a ``.gguf`` that is not GGUF (a web page) is refused."""
        hashing = _Hashing(size)
        sha, size = self._retrying(url, hashing)
        if _split_query(url)[0].lower().endswith(".gguf") and not hashing.head.startswith(b"GGUF"):
            fix = "check the URL"
            if "/blob/" in url:  # the Hub's web page of the file, copied from the browser
                fix = "that is the Hub's web page of the file: use its download URL (/resolve/ instead of /blob/)"
            raise SourceError(
                f"source {self.text!r}: {url} is not a GGUF file (it starts {hashing.head[:8]!r}); {fix}."
            )
        return sha, size

    @staticmethod
    def _pin(where: str, sha: str, size: int) -> FilePin:
        # Split siblings share a folder: each is pinned by its name, which locate() puts back beside the source.
        return FilePin(path=posixpath.basename(where), size=size, sha256=sha)

    def _retrying(self, url: str, read: Callable[[Any], Any]) -> Any:
        """``read(transport)`` on ``url``, retrying what a retry can fix (5xx, 429, refused, reset).

        A missing file is an answer, not a fault: ``read`` says so itself. Only
        a server that keeps failing (or cannot be reached) ends in a NetworkError.
        """
        transport = transport_for(Location(url), FetchPolicy.from_env())
        return with_retries(lambda: read(transport), f"source {self.text!r}: cannot read {url}: ", "the server")


def _split_query(url: str) -> tuple[str, str]:
    """An HTTP(S) URL without its ``?query`` (and ``#fragment``), and the ``?query`` to put back.

    The file's name is in the path: the Hub's download link (``…/x.gguf?download=true``) or a
    signed URL pins ``x.gguf``, and its split siblings are found beside it with the same query."""
    if not url.startswith(("http://", "https://")):
        return url, ""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")), f"?{parts.query}" if parts.query else ""


def _local_path(url: str) -> str | None:
    """The file system path ``url`` names (``file://`` URLs percent-decoded), or None if it is remote."""
    if url.startswith("file://"):
        from urllib.request import url2pathname  # a large import, for file:// sources only

        return url2pathname(urlsplit(url).path)
    return None if _SCHEME_RE.match(url) else url


def _size_of(transport: Any) -> int | None:
    """The size of the file behind ``transport``, or None if there is none (404, no such key)."""
    try:
        with transport.read(0, 1) as body:
            if body.total is None:
                raise SourceError(f"{transport.url}: the server does not say the file's size, so it cannot be pinned.")
            return body.total
    except SourceMissing:
        return None


class _Hashing:
    """sha256 of a remote file, read once; a retry resumes where the last attempt stopped."""

    def __init__(self, size: int) -> None:
        self.size, self.done, self.digest = size, 0, hashlib.sha256()
        self.head = b""  # the first bytes, to tell a GGUF file from a web page

    def __call__(self, transport: Any) -> tuple[str, int]:
        with transport.read(self.done, self.size) as body:
            if body.total not in (None, self.size) or body.start not in (0, self.done):
                raise SourceError(f"{transport.url} changed while it was read; run the command again.")
            if body.start != self.done:  # the server ignored the range and sent the whole file
                self.done, self.digest, self.head = 0, hashlib.sha256(), b""
            for chunk in body.chunks:
                if len(self.head) < 16:
                    self.head += chunk[: 16 - len(self.head)]
                self.digest.update(chunk)
                self.done += len(chunk)
        return self.digest.hexdigest(), self.size


def _hash_local(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class BuiltinSources:
    """The built-in forms, as a ``modelfix_parse_source`` implementation: :func:`parse_source`
    asks it after every plugin (a plugin may claim any scheme, the catch-alls included)."""

    @hookimpl
    def modelfix_parse_source(self, text: str, base_dir: Path) -> Source | None:
        if text.startswith("hf://"):
            return HubSource.parse(text)
        if _SCHEME_RE.match(text):
            return FsspecSource(text=text, url=text)
        as_path = Path(os.path.expanduser(text))
        if not as_path.is_absolute():
            as_path = base_dir / as_path
        looks_local = text.startswith((".", "/", "~")) or text.endswith(".gguf") or os.path.exists(as_path)
        if looks_local:
            return FsspecSource(text=text, url=str(as_path.resolve()))
        if text.count("/") == 1 or re.match(r"^[^/]+/[^/@:]+[:@]", text):
            return HubSource.parse(text)
        return None


_BUILTIN = BuiltinSources()


def source_for(entry_source: str, lock_path: Path | None) -> Source:
    """The Source of a lockfile entry (relative paths are relative to the lockfile)."""
    return parse_source(entry_source, lock_path.parent if lock_path else None)
