"""One eviction policy: least recently used first, under a budget, never the held.

Both the disk store (budget: bytes on disk; held = leased by a live process or
pinned by the lockfile being synced) and the memory pool (budget: estimated
bytes of resident handles in RAM, and on each GPU its own budget, plus a maximum count;
held = in use) ask :func:`plan` which items to drop. Keeping it in one pure function means the
caches and budgets cannot drift apart in how they choose: with several budgets, the least
recently used idle item goes first until every budget has room::

    items (LRU order) ──▶ drop the oldest idle one while any budget is short:
                            main budget   Σ cost            + incoming            <= budget
                            "gpu0" ...    Σ costs["gpu0"]   + incomings["gpu0"]   <= budgets["gpu0"]
                            count         n items (+ 1 incoming)                  <= max_count

When nothing it may evict makes room, it raises :class:`~modelfix.errors.NoRoom` (defined with
the other errors), which each
caller turns into its own error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from .errors import NoRoom

__all__ = ["Candidate", "NoRoom", "plan", "parse_size", "format_size"]


@dataclass(frozen=True)
class Candidate:
    """Something that occupies ``cost`` of the budget and was last used at ``last_used``."""

    key: Hashable
    cost: int
    last_used: float
    held: bool = False
    costs: Mapping[str, int] = field(default_factory=dict)  # what it takes of each other budget ("gpu0")


def plan(
    items: Iterable[Candidate],
    budget: float = math.inf,
    incoming: int = 0,
    max_count: int | None = None,
    *,
    budgets: Mapping[str, float] | None = None,
    incomings: Mapping[str, int] | None = None,
) -> list[Hashable]:
    """Keys to evict, oldest first, so that ``incoming`` fits.

    After evicting the returned keys, the total cost plus ``incoming`` is at
    most ``budget``, each other budget's (``budgets[name]``, with the items'
    ``costs[name]`` and ``incomings[name]``) likewise, and (when ``incoming``
    > 0 counts as one more item) the number of items is within ``max_count``.
    Raises :class:`NoRoom` when that cannot be reached without touching held items.
    """
    items = list(items)
    limits: list[tuple[str, float, int, Callable[[Candidate], int]]] = [("", budget, incoming, _main_cost)]
    for name, limit in (budgets or {}).items():
        limits.append((name, limit, (incomings or {}).get(name, 0), functools.partial(_other_cost, name)))
    totals = [sum(cost(i) for i in items) for _, _, _, cost in limits]
    for name, limit, needed, cost in limits:
        held = sum(cost(i) for i in items if i.held)
        if needed + held > limit:
            raise _no_room(needed, limit, held, name)
    count = len(items) + (1 if incoming or any((incomings or {}).values()) else 0)
    victims: list[Hashable] = []
    for item in sorted((i for i in items if not i.held), key=lambda i: i.last_used):
        over_budget = any(total + needed > limit for total, (_, limit, needed, _) in zip(totals, limits, strict=True))
        over_count = max_count is not None and count > max_count
        if not (over_budget or over_count):
            break
        victims.append(item.key)
        totals = [total - cost(item) for total, (_, _, _, cost) in zip(totals, limits, strict=True)]
        count -= 1
    if max_count is not None and count > max_count:
        raise _no_room(incoming, budget, sum(i.cost for i in items if i.held))
    return victims


def _main_cost(item: Candidate) -> int:
    return item.cost


def _other_cost(name: str, item: Candidate) -> int:
    return item.costs.get(name, 0)


def _no_room(needed: int, budget: float, held: int, name: str = "") -> NoRoom:
    return NoRoom(
        f"needs {format_size(needed)} but the {name + ' ' if name else ''}budget is {format_size(budget)} "
        f"with {format_size(held)} held by items in use",
        needed=needed,
        budget=budget,
        held=held,
        budget_name=name,
    )


_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int | float, what: str = "size") -> float:
    """``"50GB"``, ``"512MiB"``, ``"1e9"``, ``"inf"`` or a number of bytes; more than zero.

    ``what`` names the setting in the error (``MODELFIX_CACHE_MAX_SIZE``, ``--max-size``).
    """
    size = _size(text)
    if size is None or not size > 0:  # `not >` also refuses NaN, which no comparison would catch
        raise ValueError(f"bad {what} {text!r}: use bytes or a size like 500MB, 50GB, 2GiB, inf (more than zero)")
    return size


def _size(text: str | int | float) -> float | None:
    """The bytes ``text`` says, or None if it is no size at all."""
    if isinstance(text, (int, float)):
        return float(text)
    value = text.strip().upper().replace("_", "")
    if value in ("INF", "INFINITY", "NONE", "UNLIMITED"):
        return math.inf
    number = value.rstrip("KMGTIB ")
    unit = value[len(number) :].strip()
    try:
        return float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        return None


def format_size(n: float) -> str:
    if math.isinf(n):
        return "unlimited"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
