"""Memory arithmetic: what a handle will take (known before loading), in RAM and on each GPU, and what the machine has.

The pool must refuse or make room *before* a load (after is too late: the
process may already be swapping, or CUDA out of memory), so the cost comes from
the GGUF header, its tensor table and the file sizes alone::

    weights  = every tensor's bytes, by layer (blk.N.*), input (token_embd) and output
               (output, output_norm): the tensor table gives each one's data offset
    kv cache = n_ctx × Σ_layers n_head_kv × (key_length + value_length) × 2 bytes (f16),
               n_ctx rounded up to a multiple of 256 as llama.cpp rounds it
    compute  = mask + the largest stage of llama.cpp's graph for one micro-batch
               (n_ubatch tokens, f32; llama.cpp's graph allocator reuses memory between stages):
                 mask       n_kv × n_ubatch × 4  (f16, 2 bytes, with flash attention)
                 attention  n_head × n_kv × n_ubatch × 4 (the scores; none with flash
                            attention) + 7 × n_ubatch × n_embd × 4
                 ffn        4 × n_ubatch × n_ff × 4 + 2 × n_ubatch × n_embd × 4
                 output     n_ubatch × n_vocab × 4 + 2 × n_ubatch × n_embd × 4   (logits: the
                            worst case asks for every token's; 512 MiB for a 262k vocabulary)

Which of it goes to a GPU with ``n_gpu_layers = k`` (llama.cpp's ``llama_model::load_tensors``)::

    output      llama.cpp counts it as layer n_layer, the first to go: on the GPU for any k >= 1;
                a model without an output tensor (tied embeddings) gets a copy of token_embd there
    layers      the last k - 1 of the n_layer blocks (il >= n_layer + 1 - k), with their share of the
                KV cache; k = n_layer + 1 (or -1) is everything. The H200 survey confirms it: a 24-layer
                model at k = 12 put 11 blocks + the output (305.8 MiB) and 11 layers of KV on CUDA0
    token_embd  stays on the CPU (the input layer always does)
    compute     on the GPU whenever the build offloads (big batches run there even at k = 0)
    per process CUDA context + cuBLAS: CUDA_OVERHEAD, counted once per device by the pool
    per handle  CUDA_HANDLE_POOL: ggml-cuda's scratch pool and graphs, freed by close()

The two constants were measured on an NVIDIA H200 (CUDA 13, driver 580, llama-cpp-python 0.3.36,
benchmarks/gpu_survey.py, 2026-12-04; docs/benchmarks.md "GPU"): 586 MiB stayed in the process
after every ``close()``; a 24-layer Q4_0 model loaded and generated with took 1510 MiB where its
buffers are 810 MiB, so 114 MiB more per handle. The formulas above match the buffer sizes
llama.cpp prints (``verbose=True``) on this CPU build within a few percent for the tiny models,
a 24-layer synthetic model and Gemma 3 270M (tests/test_estimate.py).

The header layout read here (GGUF v2/v3, little- or big-endian)::

    "GGUF" u32 version  u64 n_tensors  u64 n_kv
    n_kv × ( key: u64 len + utf-8 | u32 type | value )      value: scalar, string, or
                                                             u32 elem type + u64 count + elems
    n_tensors × ( name: u64 len + utf-8 | u32 n_dims | n_dims × u64 | u32 type | u64 offset )
    padding to general.alignment (32), then the tensor data

Big arrays (the vocabulary) are skipped rather than decoded, so a header of a
40 GB model reads in milliseconds; a tensor's bytes are the distance to the next
offset. Results are cached per (path, size, mtime).

The other side of the budget: :func:`memory_capacity` (RAM, or VRAM) and
:func:`gpu_devices` (each GPU ggml sees, with its free and total memory).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ModelfixError

__all__ = [
    "GGUFHeader",
    "Estimate",
    "GpuDevice",
    "CUDA_OVERHEAD",
    "CUDA_HANDLE_POOL",
    "read_header",
    "model_parts",
    "estimate",
    "memory_capacity",
    "gpu_devices",
    "offload_supported",
]

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_CTX_PAD = 256
_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
_MIB = 1 << 20
CUDA_OVERHEAD = 586 * _MIB  # per process and device: CUDA context + cuBLAS (H200 survey, see above)
CUDA_HANDLE_POOL = 114 * _MIB  # per handle on a GPU: ggml-cuda's scratch pool and graphs (same survey)


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
    n_ff: int = 0  # feed_forward_length (the largest, where it is per layer)
    layer_bytes: tuple[int, ...] = ()  # tensor bytes of blk.0 ... blk.N-1 (this file only for a split part)
    input_bytes: int = 0  # token_embd and anything outside the blocks and the output
    output_bytes: int = 0  # output.weight and output_norm
    tied_output: bool = False  # no output.weight: llama.cpp reuses token_embd (a copy on the GPU)
    embd_bytes: int = 0  # token_embd.weight


@dataclass(frozen=True)
class Estimate:
    """Estimated bytes of one handle; ``total`` is all of it, ``ram`` and ``gpu`` where it lives.

    ``gpu_*`` are zero unless the estimate was made for a build that offloads (``offload=True``);
    ``gpu_layers`` is the number of repeating layers on the GPU (``n_gpu_layers`` as llama.cpp
    counts: up to n_layer + 1 with the output layer).
    """

    weights: int
    kv_cache: int
    compute: int
    n_ctx: int
    gpu_weights: int = 0
    gpu_kv: int = 0
    gpu_compute: int = 0
    gpu_layers: int = 0
    cpu_weights: int | None = None  # weights left in RAM (None: all of them)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    @property
    def gpu(self) -> int:
        """VRAM of this handle, on top of the per-process :data:`CUDA_OVERHEAD`."""
        return self.gpu_weights + self.gpu_kv + self.gpu_compute

    @property
    def ram(self) -> int:
        """What stays in RAM: the weights and KV cache not offloaded, and the CPU's compute buffer."""
        cpu_weights = self.weights if self.cpu_weights is None else self.cpu_weights
        return cpu_weights + self.kv_cache - self.gpu_kv + self.compute


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as ggml sees it (``index`` is what ``main_gpu`` and ``tensor_split`` count)."""

    index: int
    name: str
    free: int
    total: int


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


def _read_kv(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Header key/values (arrays other than per-layer shapes replaced by their length), and each tensor's bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Reader(f, path)
        if f.read(4) != b"GGUF":
            raise ModelfixError(f"{path}: not a GGUF file (bad magic). Check the lockfile pins with `modelfix verify`.")
        version = r.unpack("I")
        if version > 0xFFFF:  # written big-endian
            r.order = ">"
        n_tensors = r.unpack("Q")
        kv: dict[str, Any] = {}
        for _ in range(r.unpack("Q")):
            key = r.string()
            kv[key] = r.value(r.unpack("I"), keep=key.endswith(("head_count", "head_count_kv", "feed_forward_length")))
        offsets: list[tuple[int, str]] = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("I")
            for _ in range(n_dims):
                r.unpack("Q")
            r.unpack("I")  # ggml type: the bytes come from the offsets, so no type table is needed
            offsets.append((r.unpack("Q"), name))
        align = int(kv.get("general.alignment", 32)) or 32
        data_start = -(-f.tell() // align) * align
    offsets.sort()
    ends = [o for o, _ in offsets[1:]] + [size - data_start]
    return kv, {name: max(0, end - start) for (start, name), end in zip(offsets, ends, strict=True)}


@functools.lru_cache(maxsize=256)
def _header(path: str, size: int, mtime_ns: int) -> GGUFHeader:
    kv, tensors = _read_kv(Path(path))
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
    n_ff = get("feed_forward_length", 0)
    head_dim = n_embd // n_head if n_head else 0
    vocab = get("vocab_size") or kv.get("tokenizer.ggml.tokens", 0)
    layers = [0] * n_layer
    input_bytes = output_bytes = 0
    for name, nbytes in tensors.items():
        m = _LAYER_RE.match(name)
        if m and int(m[1]) < n_layer:
            layers[int(m[1])] += nbytes
        elif name.startswith(("output.", "output_norm.")):
            output_bytes += nbytes
        else:
            input_bytes += nbytes
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
        n_ff=int(max(n_ff) if isinstance(n_ff, list) and n_ff else (n_ff or 0)),
        layer_bytes=tuple(layers),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        tied_output="output.weight" not in tensors,
        embd_bytes=tensors.get("token_embd.weight", 0),
    )


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The shape of the model in ``path`` (the first part of a split set: its own tensors only)."""
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


@functools.lru_cache(maxsize=256)
def _part_tensors(path: str, size: int, mtime_ns: int) -> dict[str, int]:
    return _read_kv(Path(path))[1]


def _tensor_bytes(parts: Sequence[Path], header: GGUFHeader) -> tuple[list[int], int, bool, int]:
    """Per-layer and output bytes over every part of a split set (each part has its own table)."""
    tensors: dict[str, int] = {}
    for part in parts:
        st = part.stat()
        tensors.update(_part_tensors(os.fspath(part), st.st_size, st.st_mtime_ns))
    layers = [0] * header.n_layer
    outputs = 0
    for name, nbytes in tensors.items():
        m = _LAYER_RE.match(name)
        if m and int(m[1]) < header.n_layer:
            layers[int(m[1])] += nbytes
        elif name.startswith(("output.", "output_norm.")):
            outputs += nbytes
    return layers, outputs, "output.weight" not in tensors, tensors.get("token_embd.weight", 0)


def estimate(
    model_path: str | os.PathLike[str],
    *,
    n_ctx: int,
    n_ubatch: int = 512,
    flash_attn: bool = False,
    mmproj_path: str | os.PathLike[str] | None = None,
    n_gpu_layers: int = 0,
    offload: bool = False,
    offload_kqv: bool = True,
) -> Estimate:
    """Estimated memory of a handle on ``model_path`` with these settings (``n_ctx=0``: the model's own).

    ``offload``: the build offloads to a GPU, so ``n_gpu_layers`` (-1: all) and the compute
    buffer go to VRAM; without it everything counts as RAM.
    """
    header = read_header(model_path)
    # llama.cpp rounds the context up to a multiple of 256 (n_ctx=100 gives n_ctx() == 256).
    ctx = -(-(n_ctx or header.n_ctx_train) // _CTX_PAD) * _CTX_PAD
    parts = model_parts(model_path)
    try:
        weights = sum(p.stat().st_size for p in parts)
        layers, outputs, tied, embd = _tensor_bytes(parts, header)
    except FileNotFoundError as exc:
        raise ModelfixError(f"split part {exc.filename} is missing beside {model_path}. Run `modelfix sync`.") from None
    mmproj = os.stat(mmproj_path).st_size if mmproj_path is not None else 0
    weights += mmproj
    per_layer_kv = [ctx * h * (header.key_length + header.value_length) * 2 for h in header.n_head_kv]
    kv = sum(per_layer_kv)
    batch = min(n_ubatch, ctx)
    compute = _compute(header, ctx, batch, flash_attn)
    if not offload:
        return Estimate(weights=weights, kv_cache=kv, compute=compute, n_ctx=ctx)
    n = header.n_layer
    k = n + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n + 1)
    first = n + 1 - k  # llama.cpp counts the output layer as layer n: k layers are it and the last k - 1 blocks
    gpu_weights = sum(layers[first:]) if k else 0
    gpu_kv = sum(per_layer_kv[first:]) if k and offload_kqv else 0
    cpu_weights = weights - gpu_weights
    if k:  # the output layer; tied embeddings are copied to the GPU and stay on the CPU
        gpu_weights += embd if tied else outputs
        cpu_weights -= 0 if tied else outputs
    if k and mmproj:  # clip runs on the GPU of an offloading build
        gpu_weights += mmproj
    return Estimate(
        weights=weights,
        kv_cache=kv,
        compute=compute,
        n_ctx=ctx,
        gpu_weights=gpu_weights,
        gpu_kv=gpu_kv,
        gpu_compute=compute + CUDA_HANDLE_POOL,
        gpu_layers=k,
        cpu_weights=cpu_weights,
    )


def _compute(h: GGUFHeader, n_kv: int, batch: int, flash_attn: bool) -> int:
    """The compute buffer of llama.cpp's worst-case graph (see the module docstring)."""
    f32 = 4
    embd = batch * h.n_embd * f32
    mask = n_kv * batch * (2 if flash_attn else f32)
    attention = (0 if flash_attn else h.n_head * n_kv * batch * f32) + 7 * embd
    ffn = 4 * batch * h.n_ff * f32 + 2 * embd
    output = batch * h.n_vocab * f32 + 2 * embd
    return mask + max(attention, ffn, output)


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


def offload_supported() -> bool:
    """Whether this llama.cpp build can offload to a GPU (asked of llama.cpp, which loads it)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _vram_total() -> int:
    return sum(d.total for d in gpu_devices())


def gpu_devices() -> list[GpuDevice]:
    """The GPUs ggml sees, with free and total memory now; empty on a CPU build or without a GPU."""
    try:
        # ggml's device API; llama-cpp-python binds no wrapper for it.
        from llama_cpp._ggml import libggml as lib

        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes, lib.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
        lib.ggml_backend_dev_type.argtypes, lib.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
        lib.ggml_backend_dev_name.argtypes, lib.ggml_backend_dev_name.restype = [ctypes.c_void_p], ctypes.c_char_p
        size_p = ctypes.POINTER(ctypes.c_size_t)
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
        found: list[GpuDevice] = []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            if lib.ggml_backend_dev_type(dev) == 1:  # GGML_BACKEND_DEVICE_TYPE_GPU
                free, size = ctypes.c_size_t(), ctypes.c_size_t()
                lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(size))
                name = (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace")
                found.append(GpuDevice(len(found), name, free.value, size.value))
        return found
    except Exception:  # an older or unusual build: no GPU known
        return []
