"""How hard to try over the network: the fetch policy, the "try again" signal, and the retry loop.

::

    FetchPolicy.from_env()     attempts, backoff, timeouts, connections, range splitting
                               (MODELFIX_RETRIES, MODELFIX_RETRY_BASE_DELAY, MODELFIX_READ_TIMEOUT,
                               MODELFIX_CONNECTIONS, MODELFIX_PARALLEL_MIN), read at call time
    Transient(reason, retry_after)
                               raised by one attempt that is worth another: 5xx, 429, reset,
                               truncation, stall (a signal inside modelfix, never an error a user sees)
    parse_retry_after(header)  seconds from ``Retry-After``: a number or an HTTP date
    retry_after(headers)       seconds an answer asks to wait: the Hub's ``RateLimit: "api";r=0;t=55``
                               (its quota is spent, renewed in t s) first, else ``Retry-After``
    with_retries(attempt, ...) the loop for calls that read nothing worth resuming (the Hub's API,
                               a remote file's size or hash while locking): backoff with jitter,
                               then a NetworkError

Downloads retry range by range in :mod:`modelfix.fetch`, which also counts progress (a range
that keeps advancing keeps trying); :mod:`modelfix.transports` and :mod:`modelfix.hub_api`
raise :class:`Transient`; both follow the same :class:`FetchPolicy`.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ModelfixError, NetworkError, redact

__all__ = ["FetchPolicy", "Transient", "parse_retry_after", "retry_after", "with_retries"]

T = TypeVar("T")


@dataclass(frozen=True)
class FetchPolicy:
    """How hard to try. ``from_env()`` reads the ``MODELFIX_*`` overrides at call time.

    ``attempts`` counts consecutive failures that made no progress: a range
    that keeps advancing keeps trying. A file of at least ``parallel_min``
    bytes that still needs more than ``split_after`` seconds after the first
    ``split_after`` seconds is split into ranges of at least ``min_range``
    bytes, as many as leave the process at most ``connections`` streams, if
    its stream spent that time waiting for the network. Splitting only streams
    the link holds back matters: when this machine's cores or disk are the
    limit, a single stream is quicker (one hashing pass straight from memory;
    4 ranges were 0.80x one stream over loopback on 2 cores).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    read_timeout: float = 30.0
    connect_timeout: float = 10.0
    connections: int = 4
    parallel_min: int = 64 * 1024 * 1024
    split_after: float = 1.0
    min_range: int = 16 * 1024 * 1024

    @classmethod
    def from_env(cls) -> FetchPolicy:
        """The defaults, overridden by ``MODELFIX_RETRIES``, ``MODELFIX_RETRY_BASE_DELAY``,
        ``MODELFIX_READ_TIMEOUT``, ``MODELFIX_CONNECTIONS`` and ``MODELFIX_PARALLEL_MIN`` (bytes)."""
        values: dict[str, Any] = {}
        for name, variable in _ENV:
            raw = os.environ.get(variable, "").strip()
            if not raw:
                continue
            kind = type(getattr(cls, name))
            try:
                values[name] = kind(raw)
            except ValueError:
                number = "a whole number" if kind is int else "a number"
                raise ModelfixError(f"{variable}={raw!r} is not {number}: correct it or unset it.") from None
        values["connections"] = max(1, int(values.get("connections", cls.connections)))
        return cls(**values)

    def delay(self, failures: int, retry_after: float | None) -> float:
        backoff = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        backoff = random.uniform(backoff / 2, backoff)  # jitter: many workers must not retry in step
        if retry_after is not None:
            return min(max(retry_after, backoff), self.max_retry_after)
        return backoff


_ENV = (  # (field, environment variable): the knobs a user may need on a bad network
    ("attempts", "MODELFIX_RETRIES"),
    ("base_delay", "MODELFIX_RETRY_BASE_DELAY"),
    ("read_timeout", "MODELFIX_READ_TIMEOUT"),
    ("connections", "MODELFIX_CONNECTIONS"),
    ("parallel_min", "MODELFIX_PARALLEL_MIN"),
)


class Transient(Exception):
    """Worth another try: 5xx, 429, reset, truncation, stall."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            import email.utils

            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# The Hub's quota header (IETF draft ratelimit-headers, as huggingface_hub reads it): "api";r=0;t=55
_RATELIMIT_RE = re.compile(r"\"\w+\"\s*;\s*r\s*=\s*(?P<r>\d+)\s*;\s*t\s*=\s*(?P<t>\d+)")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds an answer (a 429, a 503) asks the client to wait, or None.

    The Hub sends ``RateLimit`` on every answer; with ``r=0`` its quota is spent and ``t`` is when
    it renews, so a 429 that carries it is waited out for ``t`` seconds, as huggingface_hub does;
    retrying sooner only spends the attempts. Otherwise ``Retry-After``."""
    match = _RATELIMIT_RE.search(headers.get("ratelimit") or "")
    if match and int(match["r"]) == 0:
        return float(match["t"])
    return parse_retry_after(headers.get("retry-after"))


def with_retries(
    attempt: Callable[[], T],
    failure: str,
    where: str,
    *,
    policy: FetchPolicy | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """``attempt()`` again, with the policy's backoff (``sleep`` waits it out), while it raises :class:`Transient`.

    Then a NetworkError: ``failure`` (what failed, e.g. ``"org/repo: "``) and the last fault,
    the number of attempts, and ``where`` to look.
    """
    policy = policy or FetchPolicy.from_env()
    failures = 0
    while True:
        try:
            return attempt()
        except Transient as exc:
            failures += 1
            if failures >= policy.attempts:
                raise NetworkError(
                    f"{failure}{redact(str(exc))} (gave up after {failures} attempts). Check the network and "
                    f"{where}, then run the command again; MODELFIX_RETRIES sets the attempts."
                ) from None
            sleep(policy.delay(failures, exc.retry_after))
