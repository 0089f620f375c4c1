"""What a test injects into :class:`~modelfix.testing.hub.LocalHub` and what it reads back.

:class:`Fault`: one way a byte download goes wrong (a status, a reset, a truncation, a short
range answer, a flipped byte, a stall), set per file with ``LocalHub.fault``.
:class:`Request`: one request as the hub logged it (``LocalHub.requests``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Fault", "Request"]


@dataclass(frozen=True)
class Fault:
    """One way a byte download goes wrong. Build with the class methods, not the constructor."""

    kind: str  # status | reset | truncate | short | corrupt | stall
    status_code: int = 0
    retry_after: int | None = None
    ratelimit_reset: int | None = None
    after_bytes: int = 0
    offset: int = 0
    seconds: float = 0.0

    @classmethod
    def status(cls, code: int, retry_after: int | None = None, ratelimit_reset: int | None = None) -> Fault:
        """Answer ``code`` (JSON error body) instead of the bytes, with ``Retry-After`` if given;
        ``ratelimit_reset``: the Hub's quota headers saying the quota is spent and renews in that
        many seconds (``RateLimit: "api";r=0;t=N``, what a real Hub's 429 carries)."""
        return cls("status", status_code=code, retry_after=retry_after, ratelimit_reset=ratelimit_reset)

    @classmethod
    def reset(cls, after_bytes: int = 0) -> Fault:
        """Send headers and ``after_bytes`` of the body, then a TCP RST (SO_LINGER 0)."""
        return cls("reset", after_bytes=after_bytes)

    @classmethod
    def truncate(cls, after_bytes: int) -> Fault:
        """Announce the full Content-Length, send ``after_bytes``, then close cleanly (FIN)."""
        return cls("truncate", after_bytes=after_bytes)

    @classmethod
    def short(cls, after_bytes: int) -> Fault:
        """Answer a range with at most ``after_bytes`` of it, and a Content-Range that says so (a
        206 for less than was asked, which HTTP allows a server); the client asks for the rest."""
        return cls("short", after_bytes=after_bytes)

    @classmethod
    def corrupt(cls, offset: int) -> Fault:
        """Flip (XOR 0xFF) the byte at file ``offset`` when the served range covers it."""
        return cls("corrupt", offset=offset)

    @classmethod
    def stall(cls, seconds: float, after_bytes: int = 0) -> Fault:
        """Go silent for ``seconds`` (or until :meth:`LocalHub.release_stalls`): before the status
        line if ``after_bytes`` is 0, else after that many body bytes; then answer normally."""
        return cls("stall", seconds=seconds, after_bytes=after_bytes)


@dataclass
class Request:
    """One logged request, as the server saw it."""

    origin: str  # "api" | "cdn"
    method: str
    path: str  # percent-decoded, without the query
    query: str
    range: str | None
    status: int
    repo: str | None
    filename: str | None
