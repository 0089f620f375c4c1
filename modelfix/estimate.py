"""Memory arithmetic: what a handle will take (known before loading) and what the machine has.

The pool must refuse or make room *before* a load (after is too late: the
process may already be swapping), so the cost comes from the GGUF header and
the file sizes alone::

    weights  = size of every model file (all parts of a split set) + the mmproj
    kv cache = n_ctx × Σ_layers n_head_kv × (key_length + value_length) × 2 bytes (f16),
               n_ctx rounded up to a multiple of 256 as llama.cpp rounds it
    compute  = n_ubatch × (n_vocab + n_head × n_ctx) × 4 bytes
               (logits and attention scores of one micro-batch, f32; flash
               attention skips the score matrix)

The header layout read here (GGUF v2/v3, little- or big-endian)::

    "GGUF" u32 version  u64 n_tensors  u64 n_kv
    n_kv × ( key: u64 len + utf-8 | u32 type | value )      value: scalar, string, or
                                                             u32 elem type + u64 count + elems

Only the key/value section is read, and big arrays (the vocabulary) are
skipped rather than decoded, so a header of a 40 GB model reads in
milliseconds. Results are cached per (path, size, mtime).

The other side of the budget, :func:`memory_capacity`, is the RAM of the
machine or, for handles offloaded to a GPU, the VRAM of the GPUs ggml sees.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ModelfixError

__all__ = ["GGUFHeader", "Estimate", "read_header", "model_parts", "estimate", "memory_capacity"]

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_CTX_PAD = 256
_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


@dataclass(frozen=True)
class GGUFHeader:
    """The shape of a model, as far as its memory cost goes."""

    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # one per layer (GGUF may store one value for all)
    key_length: int
    value_length: int
    n_ctx_train: int
    n_vocab: int
    split_count: int = 1
    model_name: str = ""  # general.name
    file_type: int | None = None  # general.file_type: llama.cpp's quantization of the file


@dataclass(frozen=True)
class Estimate:
    """Estimated bytes of one handle; ``total`` is what the pool budgets."""

    weights: int
    kv_cache: int
    compute: int
    n_ctx: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f, self.path, self.order = f, path, "<"

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(self.order + fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ModelfixError(f"{self.path}: GGUF header is truncated. Re-fetch it with `modelfix verify --full`.")
        return struct.unpack(self.order + fmt, data)[0]

    def string(self) -> str:
        n = self.unpack("Q")
        return self.f.read(n).decode("utf-8", errors="replace")

    def value(self, kind: int, keep: bool) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ModelfixError(f"{self.path}: unknown GGUF value type {kind}; is this a GGUF file?")
        elem, count = self.unpack("I"), self.unpack("Q")
        if elem in _SCALARS and not keep:
            self.f.seek(count * struct.calcsize(self.order + _SCALARS[elem]), os.SEEK_CUR)
            return count
        if elem == _STRING and not keep:
            for _ in range(count):
                self.f.seek(self.unpack("Q"), os.SEEK_CUR)
            return count
        return [self.value(elem, keep) for _ in range(count)]


def _read_kv(path: Path) -> dict[str, Any]:
    """Header key/values; arrays other than per-layer shapes are replaced by their length."""
    with open(path, "rb") as f:
        r = _Reader(f, path)
        if f.read(4) != b"GGUF":
            raise ModelfixError(f"{path}: not a GGUF file (bad magic). Check the lockfile pins with `modelfix verify`.")
        version = r.unpack("I")
        if version > 0xFFFF:  # written big-endian
            r.order = ">"
        r.unpack("Q")  # tensor count: not needed
        kv: dict[str, Any] = {}
        for _ in range(r.unpack("Q")):
            key = r.string()
            kv[key] = r.value(r.unpack("I"), keep=key.endswith(("head_count", "head_count_kv")))
        return kv


@functools.lru_cache(maxsize=256)
def _header(path: str, size: int, mtime_ns: int) -> GGUFHeader:
    kv = _read_kv(Path(path))
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelfixError(f"{path}: GGUF header has no general.architecture; is this the first part of the model?")

    def get(key: str, default: Any = None) -> Any:
        return kv.get(f"{arch}.{key}", default)

    n_layer = int(get("block_count", 0))
    n_embd = int(get("embedding_length", 0))
    heads = get("attention.head_count", 1)
    n_head = max(heads) if isinstance(heads, list) else int(heads)
    kv_heads = get("attention.head_count_kv", n_head)
    per_layer = tuple(int(h) for h in kv_heads) if isinstance(kv_heads, list) else (int(kv_heads),) * n_layer
    head_dim = n_embd // n_head if n_head else 0
    vocab = get("vocab_size") or kv.get("tokenizer.ggml.tokens", 0)
    return GGUFHeader(
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=per_layer,
        key_length=int(get("attention.key_length", head_dim)),
        value_length=int(get("attention.value_length", head_dim)),
        n_ctx_train=int(get("context_length", 0)),
        n_vocab=int(vocab),
        split_count=int(kv.get("split.count", 1)),
        model_name=str(kv.get("general.name", "")),
        file_type=kv["general.file_type"] if isinstance(kv.get("general.file_type"), int) else None,
    )


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The shape of the model in ``path`` (the first part of a split set)."""
    st = os.stat(path)
    return _header(os.fspath(path), st.st_size, st.st_mtime_ns)


def model_parts(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` and, for ``x-00001-of-0000N.gguf``, its split siblings beside it."""
    path = Path(path)
    m = _SPLIT_RE.match(path.name)
    if not m:
        return [path]
    n = int(m["n"])
    return [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


def estimate(
    model_path: str | os.PathLike[str],
    *,
    n_ctx: int,
    n_ubatch: int = 512,
    flash_attn: bool = False,
    mmproj_path: str | os.PathLike[str] | None = None,
) -> Estimate:
    """Estimated memory of a handle on ``model_path`` with these settings (``n_ctx=0``: the model's own)."""
    header = read_header(model_path)
    # llama.cpp rounds the context up to a multiple of 256 (n_ctx=100 gives n_ctx() == 256).
    ctx = -(-(n_ctx or header.n_ctx_train) // _CTX_PAD) * _CTX_PAD
    try:
        weights = sum(p.stat().st_size for p in model_parts(model_path))
    except FileNotFoundError as exc:
        raise ModelfixError(f"split part {exc.filename} is missing beside {model_path}. Run `modelfix sync`.") from None
    if mmproj_path is not None:
        weights += os.stat(mmproj_path).st_size
    kv = ctx * sum(header.n_head_kv) * (header.key_length + header.value_length) * 2
    batch = min(n_ubatch, ctx)
    scores = 0 if flash_attn else header.n_head * ctx
    compute = batch * (header.n_vocab + scores) * 4
    return Estimate(weights=weights, kv_cache=kv, compute=compute, n_ctx=ctx)


def memory_capacity(offload: bool) -> float:
    """Bytes of VRAM when ``offload`` and a GPU is found, else of RAM; ``inf`` if unknown."""
    if offload:
        vram = _vram_total()
        if vram:
            return float(vram)
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no auto budget
        return math.inf


def _vram_total() -> int:
    try:
        # ggml's device API; llama-cpp-python binds no wrapper for it.
        from llama_cpp._ggml import libggml as lib

        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes, lib.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
        lib.ggml_backend_dev_type.argtypes, lib.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
        size_p = ctypes.POINTER(ctypes.c_size_t)
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
        total = 0
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            if lib.ggml_backend_dev_type(dev) == 1:  # GGML_BACKEND_DEVICE_TYPE_GPU
                free, size = ctypes.c_size_t(), ctypes.c_size_t()
                lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(size))
                total += size.value
        return total
    except Exception:  # an older or unusual build: fall back to RAM
        return 0
