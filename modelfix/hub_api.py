"""The Hub API calls that locking makes, each read with bounds.

A hostile or broken endpoint (``HF_ENDPOINT`` points anywhere) must not exhaust memory or keep
``modelfix lock`` running for ever; huggingface_hub's own calls read whole answers and follow
``Link: rel=next`` without end, so locking asks these three itself, with its session::

    commit(repo, revision)   GET /api/models/{repo}/revision/{revision}      -> the commit sha
                             one answer of at most MAX_ANSWER_BYTES, decoded
    tree(repo, commit)       GET /api/models/{repo}/tree/{commit}?recursive=true&expand=false
                             -> file entries (dicts: path, size, lfs); pages follow Link: rel=next,
                             at most MAX_PAGES of them and MAX_ANSWER_BYTES each, within
                             LISTING_SECONDS, each asked of the endpoint's own origin (a relative
                             Link, or another spelling of the Hub's host, is rebased onto it)
    plain_file(url, size)    a non-LFS file (preset.ini) -> (sha256, size); the body is read to the
                             size the listing declares and one byte more

Answers are decoded (gzip, ...) by httpx2 in bounded pieces and counted as they arrive, so a
small compressed bomb is cut off once its decoded size passes the bound. An error answer is
read with the same bound and handed to huggingface_hub's ``hf_raise_for_status``, whose errors
:meth:`modelfix.sources.HubSource._once` turns into modelfix's; a crossed bound is a
:class:`~modelfix.errors.SourceError` that names the repository and the bound.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from .errors import SourceError
from .retry import FetchPolicy

__all__ = ["MAX_ANSWER_BYTES", "MAX_PAGES", "LISTING_SECONDS", "commit", "tree", "plain_file"]

# A model_info answer of a repository with 10,000 files is a few MB; a tree page of 1,000 entries
# (the Hub's page size) about 300 KB.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
MAX_PAGES = 1000  # 1,000,000 files at the Hub's page size
LISTING_SECONDS = 300.0


def commit(endpoint: str, repo: str, revision: str, token: str | None) -> Any:
    """The ``sha`` field of the model info of ``repo`` at ``revision`` (whatever the answer holds)."""
    url = f"{endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
    info = _json(_get(url, token, repo, "model info", deadline=None), repo, "model info")
    return info.get("sha") if isinstance(info, dict) else None


def tree(endpoint: str, repo: str, revision: str, token: str | None) -> list[dict[str, Any]]:
    """Every file entry (``type == "file"``) of ``repo`` at ``revision``, over all pages."""
    url: str | None = f"{endpoint}/api/models/{repo}/tree/{quote(revision, safe='')}?recursive=true&expand=false"
    deadline = time.monotonic() + LISTING_SECONDS
    files: list[dict[str, Any]] = []
    pages = 0
    while url is not None:
        if pages == MAX_PAGES:
            raise SourceError(
                f"{repo}: the file listing at {endpoint} ran past {MAX_PAGES} pages; a Hub repository "
                "never needs that many. Check HF_ENDPOINT."
            )
        body, links = _get(url, token, repo, "file listing", deadline=deadline, links=True)
        page = _json(body, repo, "file listing")
        if not isinstance(page, list):
            raise SourceError(f"{repo}: the file listing at {endpoint} is not a list of files. Check HF_ENDPOINT.")
        files += [e for e in page if isinstance(e, dict) and e.get("type") == "file"]
        pages += 1
        url = _on_endpoint(endpoint, url, links["next"]["url"]) if links.get("next", {}).get("url") else None
    return files


def _on_endpoint(endpoint: str, current: str, link: str) -> str:
    """The next page's URL, on the endpoint's own origin.

    A Link may be relative, or name the same Hub by another spelling (``hf.co`` for
    ``huggingface.co``, an explicit ``:443``); its path and query (the cursor) are what matter.
    Asking the endpoint for them also keeps the token from going to any other host.
    """
    target, base = urlsplit(urljoin(current, link)), urlsplit(endpoint)
    return urlunsplit((base.scheme, base.netloc, target.path, target.query, ""))


def plain_file(url: str, size: int, token: str | None, repo: str, path: str) -> tuple[str, int]:
    """sha256 and size of the non-LFS file at ``url``, whose listing declared ``size`` bytes."""
    digest, got = hashlib.sha256(), 0
    with _stream(url, token, repo, path) as response:
        for chunk in response.iter_bytes():
            got += len(chunk)
            if got > size:
                raise SourceError(
                    f"{repo}: {path}: the server sent more than the {size} bytes its file listing declares. "
                    "Check HF_ENDPOINT, then run the command again."
                )
            digest.update(chunk)
    if got != size:
        raise SourceError(f"{repo}: {path}: the server sent {got} bytes, its file listing declares {size}. Run again.")
    return digest.hexdigest(), got


def _get(url: str, token: str | None, repo: str, what: str, *, deadline: float | None, links: bool = False) -> Any:
    """The decoded body of ``url`` (and its Link header's links when ``links``), within the bounds."""
    body = bytearray()
    with _stream(url, token, repo, what) as response:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise SourceError(
                    f"{repo}: the Hub's answer for the {what} is over {MAX_ANSWER_BYTES // 2**20} MiB once decoded; "
                    "a Hub sends far less. Check HF_ENDPOINT."
                )
            if deadline is not None and time.monotonic() > deadline:
                raise _too_slow(repo)
        if deadline is not None and time.monotonic() > deadline:
            raise _too_slow(repo)
        return (bytes(body), response.links) if links else bytes(body)


@contextmanager
def _stream(url: str, token: str | None, repo: str, what: str) -> Iterator[Any]:
    """A streamed GET of ``url`` (the token sent to the Hub's origin only); an error answer raises
    huggingface_hub's error for it, read from at most MAX_ANSWER_BYTES of its body."""
    import httpx2
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    policy = FetchPolicy.from_env()
    timeout = httpx2.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    headers = build_hf_headers(token=token or False)
    with get_session().stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
        if response.status_code >= 400:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    break
            kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DECODED_HEADERS]
            hf_raise_for_status(
                httpx2.Response(response.status_code, headers=kept, content=bytes(body), request=response.request)
            )
        yield response


# Headers that described the bytes on the wire, not the decoded copy an error is built from.
_DECODED_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


def _json(body: bytes, repo: str, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise SourceError(f"{repo}: the Hub's answer for the {what} is not JSON. Check HF_ENDPOINT.") from None


def _too_slow(repo: str) -> SourceError:
    return SourceError(
        f"{repo}: the file listing took more than {LISTING_SECONDS:g} s; the Hub answers in seconds. "
        "Check HF_ENDPOINT and the network, then run the command again."
    )
