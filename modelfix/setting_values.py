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

__all__ = ["LLAMA_DEFAULT_SEED", "MAX_TOKENS", "MAX_DEVICES", "SPLIT_MODES", "CONVERTERS", "check_setting"]

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


# llama.cpp's LLAMA_MAX_DEVICES: llama-cpp-python refuses a longer tensor_split.
MAX_DEVICES = 16
SPLIT_MODES = ("none", "layer", "row")  # llama_cpp.LLAMA_SPLIT_MODE_NONE, _LAYER, _ROW: 0, 1, 2


def _split(value: Any) -> tuple[float, ...] | None:
    expected = (
        f'a list of numbers, each finite and >= 0, not all zero, at most {MAX_DEVICES} ("3,1" in the environment)'
    )
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else value
    try:
        split = tuple(_float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(expected) from None
    if not split or len(split) > MAX_DEVICES or min(split) < 0 or not sum(split) > 0:
        raise ValueError(expected)
    return split


def _gpu_layers(value: Any) -> int | str:
    """``"auto"`` (as many layers as the GPU budget holds), -1 (all) or a count."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _int(-1)(value)
    except ValueError:
        raise ValueError('"auto", -1 (all layers) or a number of layers >= 0') from None


def _split_mode(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(SPLIT_MODES):
        return SPLIT_MODES[value]
    text = value.strip().lower() if isinstance(value, str) else None
    if text in SPLIT_MODES:
        return text
    raise ValueError('"none" (all on main_gpu), "layer" or "row" (split across the GPUs)')


CONVERTERS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        "n_gpu_layers": _gpu_layers,
        "main_gpu": _int(0),
        "tensor_split": _split,
        "split_mode": _split_mode,
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
