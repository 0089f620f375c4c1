"""Tiny, valid llama-architecture GGUF files for tests, with really quantized weights.

This module owns the bytes of every synthetic model the test suite uses: a
randomly initialised llama model (with an embedded SPM tokenizer and a chatml
chat template) that llama.cpp loads and runs in milliseconds, real split sets
(``name-00001-of-0000N.gguf``), a ``clip`` mmproj fixture, a llama.cpp preset
file, and a Hub-repo-like folder holding all of them.

The layer matrices are stored in the file's type (``qtype``), quantized by the
``gguf`` package, so llama.cpp runs its quantized CPU kernels on them; the
embedding, output head and norms stay F32, as llama.cpp keeps them out of its
repacked buffers anyway. The default, Q4_0 at ``n_embd`` 64, is what
llama.cpp repacks at load (``CPU_REPACK``, or ``AMX`` on hosts with AMX)::

    type    file type (general.file_type)   repacked by llama.cpp's CPU backend
    F32     ALL_F32                          no
    F16     MOSTLY_F16                       no
    BF16    MOSTLY_BF16                      no
    Q8_0    MOSTLY_Q8_0                      AMX hosts (and ARM); not AVX2/AVX-512 alone
    Q4_0    MOSTLY_Q4_0                      yes (q4_0_8x8 on AVX2, AMX where present)
    Q4_1    MOSTLY_Q4_1                      AMX hosts
    Q5_0    MOSTLY_Q5_0                      no
    Q5_1    MOSTLY_Q5_1                      no

K-quants (Q4_K_M, ...) cannot be written here (``gguf`` does not quantize
them): they come from a real model (:mod:`modelfix.testing.pretrained`). A
repository file is named after what it holds: ``tiny-Q4_0.gguf`` is Q4_0.

Everything is a pure function of its arguments: weights come from
``numpy.random.Generator(seed)`` and no timestamps or uuids enter the metadata,
so the same call always writes byte-identical files (tests pin their sha256).

    python -m modelfix.testing.gguf OUT_DIR [--tags Q4_0,Q8_0] [--split-tags Q5_0] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import gguf
import numpy as np

__all__ = [
    "TinyModelSpec",
    "QTYPES",
    "VOCAB",
    "CHAT_TEMPLATE",
    "write_tiny_model",
    "write_mmproj",
    "write_preset",
    "tiny_repo_files",
    "tag_seed",
    "main",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

_Q = gguf.GGMLQuantizationType
_F = gguf.LlamaFileType
# type name (also the repository tag) -> (tensor type of the layer matrices, general.file_type)
QTYPES: Mapping[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = MappingProxyType(
    {
        "F32": (_Q.F32, _F.ALL_F32),
        "F16": (_Q.F16, _F.MOSTLY_F16),
        "BF16": (_Q.BF16, _F.MOSTLY_BF16),
        "Q8_0": (_Q.Q8_0, _F.MOSTLY_Q8_0),
        "Q4_0": (_Q.Q4_0, _F.MOSTLY_Q4_0),
        "Q4_1": (_Q.Q4_1, _F.MOSTLY_Q4_1),
        "Q5_0": (_Q.Q5_0, _F.MOSTLY_Q5_0),
        "Q5_1": (_Q.Q5_1, _F.MOSTLY_Q5_1),
    }
)


def _qtype(name: str) -> str:
    """The canonical type name for ``name`` (case-insensitive), or a ValueError naming the ones there are."""
    canonical = name.upper()
    if canonical not in QTYPES:
        raise ValueError(
            f"cannot write a tiny model of type {name!r}: modelfix.testing.gguf writes {', '.join(QTYPES)} "
            "(K-quants such as Q4_K_M come only from real models: see modelfix.testing.pretrained)"
        )
    return canonical


def _build_vocab() -> tuple[list[str], list[float], list[int]]:
    """SPM ("llama") vocabulary: specials, the 256 byte-fallback tokens, chat markers, pieces."""
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [T.CONTROL, T.CONTROL]
    # Every multi-character piece has a merge path through shorter pieces, since
    # SPM only merges adjacent symbols whose concatenation is itself a token.
    pieces = ["\u2581", *"abcdefghijklmnopqrstuvwxyz", *"HTW", *".,!?"]
    pieces += [
        "\u2581t",
        "\u2581th",
        "\u2581the",
        "\u2581a",
        "\u2581an",
        "\u2581and",
        "\u2581i",
        "\u2581is",
        "\u2581H",
        "\u2581He",
        "he",
        "ll",
        "llo",
        "\u2581Hello",
        "or",
        "\u2581w",
        "\u2581wor",
        "ld",
        "\u2581world",
        "\u2581tiny",
        "\u2581ti",
        "ny",
    ]
    tokens += pieces
    types += [T.NORMAL] * len(pieces)
    # Longer pieces score higher so whole words win the merge race.
    scores = [0.0] * (len(tokens) - len(pieces)) + [float(len(p)) - 10.0 for p in pieces]
    return tokens, scores, [int(t) for t in types]


VOCAB: tuple[list[str], list[float], list[int]] = _build_vocab()
_NORMAL_START = len(VOCAB[0]) - sum(1 for t in VOCAB[2] if t == gguf.TokenType.NORMAL)


@dataclasses.dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny llama model; ``n_vocab`` is fixed by :data:`VOCAB`."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_ff: int = 128
    n_ctx_train: int = 512
    qtype: str = "Q4_0"  # the layer matrices' type: a key of QTYPES

    def __post_init__(self) -> None:
        if min(self.n_layer, self.n_embd, self.n_head, self.n_ff, self.n_ctx_train) <= 0:
            raise ValueError(f"all TinyModelSpec fields must be positive: {self}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd={self.n_embd} must split into n_head={self.n_head} heads of even size (rope)")
        object.__setattr__(self, "qtype", _qtype(self.qtype))
        block = gguf.GGML_QUANT_SIZES[QTYPES[self.qtype][0]][0]
        if self.n_embd % block or self.n_ff % block:
            raise ValueError(
                f"{self.qtype} packs rows in blocks of {block}: n_embd and n_ff must be multiples of {block}"
            )

    @property
    def n_vocab(self) -> int:
        return len(VOCAB[0])

    @property
    def n_tensors(self) -> int:
        return 3 + 9 * self.n_layer

    def tensor_bytes(self) -> int:
        """Bytes of the weights, i.e. the file size less its (~10 KB) header and alignment padding."""
        e, f = self.n_embd, self.n_ff
        block, size = gguf.GGML_QUANT_SIZES[QTYPES[self.qtype][0]]
        f32 = 4 * (2 * self.n_vocab * e + e + self.n_layer * 2 * e)
        return f32 + self.n_layer * (4 * e * e + 3 * e * f) // block * size

    def grown_to(self, target_bytes: int) -> TinyModelSpec:
        """Widen n_embd (n_ff keeps its ratio) until the weights reach ``target_bytes``.

        Width rather than depth, because generation cost is dominated by the
        number of sequential layer passes; a 2-layer wide model stays fast.
        """
        step = math.lcm(64, 2 * self.n_head)  # also whole quantization blocks (32)
        ratio = self.n_ff / self.n_embd
        spec = self
        while spec.tensor_bytes() < target_bytes:
            e = (spec.n_embd // step + 1) * step
            spec = dataclasses.replace(spec, n_embd=e, n_ff=max(1, round(e * ratio)))
        return spec


def _tensors(spec: TinyModelSpec, seed: int) -> list[tuple[str, np.ndarray]]:
    """F32 weights in llama.cpp's canonical order; numpy shapes are (out, in)."""
    rng = np.random.default_rng(seed)
    e, f, v = spec.n_embd, spec.n_ff, spec.n_vocab

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale)

    def norm() -> np.ndarray:
        return np.ones(e, dtype=np.float32)

    out = [("token_embd.weight", mat(v, e, 1.0))]
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", norm()),
            (b + "attn_q.weight", mat(e, e, e**-0.5)),
            (b + "attn_k.weight", mat(e, e, e**-0.5)),
            (b + "attn_v.weight", mat(e, e, e**-0.5)),
            (b + "attn_output.weight", mat(e, e, e**-0.5)),
            (b + "ffn_norm.weight", norm()),
            (b + "ffn_gate.weight", mat(f, e, e**-0.5)),
            (b + "ffn_up.weight", mat(f, e, e**-0.5)),
            (b + "ffn_down.weight", mat(e, f, f**-0.5)),
        ]
    head = mat(v, e, 1.0)
    # Zero logits for specials and byte tokens: random normal-piece logits then
    # win greedy decoding, so output is readable text that never hits EOS and
    # always runs to max_tokens.
    head[:_NORMAL_START] = 0.0
    out += [("output_norm.weight", norm()), ("output.weight", head)]
    return out


def _shard_starts(n_tensors: int, split_parts: int) -> set[int]:
    if not 1 <= split_parts <= n_tensors:
        raise ValueError(f"split_parts={split_parts} must be between 1 and the tensor count {n_tensors}")
    base, extra = divmod(n_tensors, split_parts)
    sizes = [base + (i < extra) for i in range(split_parts)]
    return {sum(sizes[:i]) for i in range(1, split_parts)}


def write_tiny_model(
    path: str | Path,
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_ff: int = 128,
    n_ctx_train: int = 512,
    split_max_tensors: int | None = None,
    target_bytes: int | None = None,
    name: str = "tiny",
    split_parts: int | None = None,
    qtype: str = "Q4_0",
) -> list[Path]:
    """Write a random llama model to ``path``; return the files written, in load order.

    ``qtype`` (a key of :data:`QTYPES`, default Q4_0) is the type of the layer
    matrices and the file's ``general.file_type``.

    ``split_max_tensors=K`` (at most K tensors per part) or ``split_parts=N``
    (exactly N parts) write a split set named ``<stem>-0000i-of-0000N.gguf``
    beside ``path`` instead of ``path`` itself; llama.cpp loads it from the
    first part (if K covers all tensors, gguf writes the single file ``path``;
    the model has ``TinyModelSpec.n_tensors`` = 3 + 9 * n_layer tensors).
    ``target_bytes`` widens the model until its file is at least
    that big.
    """
    if split_max_tensors is not None and split_parts is not None:
        raise ValueError("give split_max_tensors or split_parts, not both")
    spec = TinyModelSpec(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_ff=n_ff, n_ctx_train=n_ctx_train, qtype=qtype)
    if target_bytes is not None:
        spec = spec.grown_to(target_bytes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors or 0)
    w.add_name(name)
    tensor_type, file_type = QTYPES[spec.qtype]
    w.add_file_type(file_type)
    w.add_vocab_size(spec.n_vocab)
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head)
    w.add_rope_dimension_count(spec.n_embd // spec.n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)

    tokens, scores, types = VOCAB
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK_ID)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_eot_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    starts = _shard_starts(spec.n_tensors, split_parts) if split_parts is not None else set()
    for i, (tname, arr) in enumerate(_tensors(spec, seed)):
        # gguf only splits at a fixed tensor count, which cannot produce every
        # part count; opening the next shard by hand gives exactly N parts.
        if i in starts:
            w.tensors.append({})
        if arr.ndim == 2 and tname.startswith("blk.") and tensor_type != gguf.GGMLQuantizationType.F32:
            q = gguf.quants.quantize(arr, tensor_type)
            w.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=tensor_type)
        else:
            w.add_tensor(tname, arr)

    files = w.format_shard_names(path)
    if split_parts is not None and split_parts > 1:
        assert len(files) == split_parts, (files, split_parts)
    _write(w)
    return files


def _write(w: gguf.GGUFWriter) -> None:
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def write_mmproj(path: str | Path, *, seed: int = 0) -> Path:
    """Write a small ``clip`` GGUF shaped like a vision projector (a repo fixture, not a usable one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "clip")
    w.add_name("tiny-mmproj")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", 32)
    w.add_uint32("clip.vision.patch_size", 8)
    w.add_uint32("clip.vision.embedding_length", 32)
    w.add_uint32("clip.vision.projection_dim", 64)
    w.add_tensor("v.patch_embd.weight", rng.standard_normal((32, 3, 8, 8), dtype=np.float32).astype(np.float16))
    w.add_tensor("mm.0.weight", rng.standard_normal((64, 32), dtype=np.float32).astype(np.float16))
    w.add_tensor("mm.0.bias", np.zeros(64, dtype=np.float32))
    _write(w)
    return path


_DEFAULT_PRESET: Mapping[str, str] = {"temp": "0.7", "top-k": "40", "ctx-size": "512"}


def write_preset(path: str | Path, *, values: Mapping[str, str] | None = None) -> Path:
    """Write a llama.cpp server-style ``preset.ini`` with a global ``[*]`` section."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{k} = {v}\n" for k, v in (values if values is not None else _DEFAULT_PRESET).items())
    path.write_text(
        f"; llama.cpp preset written by modelfix.testing.gguf\nversion = 1\n\n[*]\n{body}", encoding="utf-8"
    )
    return path


def tag_seed(seed: int, tag: str) -> int:
    """The seed :func:`tiny_repo_files` uses for ``tag``: differs per tag, independent of tag order."""
    return (seed * 1_000_003 + zlib.crc32(tag.encode())) % 2**32


def tiny_repo_files(
    dir: str | Path,
    *,
    tags: Sequence[str] = ("Q4_0", "Q8_0"),
    split_tags: Sequence[str] = (),
    split_parts: int = 3,
    mmproj: bool = True,
    preset: bool = True,
    seed: int = 0,
    name: str = "tiny",
) -> dict[str, Path]:
    """Write a Hub-repo-like folder; return ``{repo-relative path: file}`` sorted by path.

    One ``{name}-{tag}.gguf`` per tag, one ``{name}-{tag}-0000i-of-0000N.gguf``
    set of exactly ``split_parts`` parts per split tag, ``mmproj-{name}-f16.gguf``
    and ``preset.ini``. A tag is the type its file holds (a key of
    :data:`QTYPES`); any other tag is a ValueError, before anything is written.
    """
    for tag in (*tags, *split_tags):
        _qtype(tag)
    root = Path(dir)
    files: list[Path] = []
    for tag in tags:
        files += write_tiny_model(root / f"{name}-{tag}.gguf", seed=tag_seed(seed, tag), name=name, qtype=tag)
    for tag in split_tags:
        files += write_tiny_model(
            root / f"{name}-{tag}.gguf", seed=tag_seed(seed, tag), name=name, split_parts=split_parts, qtype=tag
        )
    if mmproj:
        files.append(write_mmproj(root / f"mmproj-{name}-f16.gguf", seed=seed))
    if preset:
        files.append(write_preset(root / "preset.ini"))
    return {p.relative_to(root).as_posix(): p for p in sorted(files)}


def main(argv: Sequence[str] | None = None) -> int:
    def csv(s: str) -> list[str]:
        return [t for t in s.split(",") if t]

    ap = argparse.ArgumentParser(
        prog="python -m modelfix.testing.gguf",
        description="Write a Hub-repository-like folder of tiny llama GGUF models with quantized weights "
        "(byte-identical for the same arguments) and print the files written.",
        epilog=f"Types (tags): {', '.join(QTYPES)}. K-quants come only from real models.",
    )
    ap.add_argument("out_dir", type=Path, help="folder to write into (created if missing)")
    ap.add_argument(
        "--tags",
        type=csv,
        default=["Q4_0", "Q8_0"],
        metavar="T1,T2",
        help="one single-file model NAME-TAG.gguf per type (default: Q4_0,Q8_0)",
    )
    ap.add_argument(
        "--split-tags",
        type=csv,
        default=[],
        metavar="T1,T2",
        help="one split set NAME-TAG-0000i-of-0000N.gguf per type (default: none)",
    )
    ap.add_argument("--split-parts", type=int, default=3, metavar="N", help="parts in each split set (default: 3)")
    ap.add_argument(
        "--seed", type=int, default=0, help="random seed of the weights; each tag derives its own (default: 0)"
    )
    ap.add_argument("--name", default="tiny", help="file name prefix and general.name (default: tiny)")
    ap.add_argument("--no-mmproj", action="store_true", help="do not write mmproj-NAME-f16.gguf")
    ap.add_argument("--no-preset", action="store_true", help="do not write preset.ini")
    a = ap.parse_args(argv)
    try:
        for tag in (*a.tags, *a.split_tags):
            _qtype(tag)
    except ValueError as exc:
        ap.error(str(exc))
    written = tiny_repo_files(
        a.out_dir,
        tags=a.tags,
        split_tags=a.split_tags,
        split_parts=a.split_parts,
        mmproj=not a.no_mmproj,
        preset=not a.no_preset,
        seed=a.seed,
        name=a.name,
    )
    for p in written.values():
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
