"""What each load setting accepts: its converter and its bounds, shared by the lockfile reader and the settings layers.

Each converter takes the raw value (already a Python object, or a string when it comes from
the environment) and returns the checked value, or raises ValueError saying what is
expected (``an integer >= 0 and <= 16777216``); the caller puts that in its own error (a
:class:`~modelfix.errors.LockError` naming the lockfile line, a
:class:`~modelfix.errors.SettingsError` naming the layer). The bounds keep a typo or a
tampered lockfile from reaching llama.cpp: a context of 2**40 tokens, a NaN RoPE frequency.

Which layer wins, the defaults and the plugin hook are :mod:`modelfix.settings`'s business.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["LLAMA_DEFAULT_SEED", "MAX_TOKENS", "CONVERTERS", "check_setting"]

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


# Far above any context or batch llama.cpp can allocate on real hardware, far below sizes that
# overflow its int32 fields or ask for petabytes: a bigger value is a typo or a tampered lockfile.
MAX_TOKENS = 2**24


def _int(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    expected = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")

    def convert(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(expected)
        if maximum is not None and value > maximum:
            raise ValueError(expected)
        return value

    return convert


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "none")):
        return None
    return _int(1)(value)


def _float(value: Any) -> float:
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        raise ValueError("a number")
    try:
        number = float(number)
    except OverflowError:  # an int beyond any float
        raise ValueError("a finite number") from None
    if not math.isfinite(number):  # nan and inf would reach llama.cpp's RoPE and poison every output
        raise ValueError("a finite number")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
    if not isinstance(value, bool):
        raise ValueError("true or false (1/0, yes/no, on/off in the environment)")
    return value


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _repack(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("auto", "on", "off"):
        return text
    raise ValueError('"auto" (follow the backend probe), "on" or "off"')


def _split(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(_float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError('a list of numbers, each finite ("3,1" in the environment)') from None


CONVERTERS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        "n_gpu_layers": _int(-1),
        "main_gpu": _int(0),
        "tensor_split": _split,
        "flash_attn": _bool,
        "offload_kqv": _bool,
        "n_ctx": _int(0, MAX_TOKENS),
        "n_batch": _int(1, MAX_TOKENS),
        "n_ubatch": _int(1, MAX_TOKENS),
        "n_threads": _optional_int,
        "n_threads_batch": _optional_int,
        "use_mmap": _bool,
        "use_mlock": _bool,
        "seed": _int(-1, LLAMA_DEFAULT_SEED),
        "rope_freq_base": _float,
        "rope_freq_scale": _float,
        "chat_format": _optional_str,
        "embedding": _bool,
        "mmproj": _bool,
        "verbose": _bool,
        "repack": _repack,
    }
)


def check_setting(name: str, value: Any) -> Any:
    """``value`` of load setting ``name`` as a load takes it, else ValueError saying what is
    expected (e.g. ``an integer >= 0 and <= 16777216``); the lockfile reader checks its settings here."""
    return CONVERTERS[name](value)
