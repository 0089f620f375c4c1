"""Memory estimates from GGUF headers, checked against gguf's reader and against llama.cpp's real RSS."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from modelfix.errors import ModelfixError
from modelfix.estimate import estimate, memory_capacity, model_parts, read_header
from modelfix.testing.gguf import TinyModelSpec, write_tiny_model


def rss() -> int:
    """Resident bytes of this process (the second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("est") / "tiny.gguf", n_layer=3, n_ctx_train=256)[0]


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> list[Path]:
    return write_tiny_model(tmp_path_factory.mktemp("est-split") / "tiny-Q4_1.gguf", split_parts=3)


def test_header_matches_what_gguf_reads(single):
    header = read_header(single)
    fields = gguf.GGUFReader(single).fields
    spec = TinyModelSpec(n_layer=3, n_ctx_train=256)
    assert header.architecture == fields["general.architecture"].contents() == "llama"
    assert header.n_layer == fields["llama.block_count"].contents() == 3
    assert header.n_embd == spec.n_embd
    assert header.n_head == spec.n_head
    assert header.n_head_kv == (spec.n_head,) * 3
    assert header.key_length == header.value_length == spec.n_embd // spec.n_head
    assert header.n_ctx_train == 256
    assert header.n_vocab == len(fields["tokenizer.ggml.tokens"].contents()) == spec.n_vocab
    assert header.split_count == 1


def test_split_sets_count_every_part(split):
    assert model_parts(split[0]) == split
    assert read_header(split[0]).split_count == 3
    assert estimate(split[0], n_ctx=128).weights == sum(p.stat().st_size for p in split)


def test_missing_split_part_is_named(tmp_path, split):
    for part in split[:2]:
        (tmp_path / part.name).write_bytes(part.read_bytes())
    with pytest.raises(ModelfixError, match=split[2].name):
        estimate(tmp_path / split[0].name, n_ctx=128)


def test_kv_cache_grows_with_n_ctx(single):
    small, large = estimate(single, n_ctx=256), estimate(single, n_ctx=1024)
    assert large.kv_cache == 4 * small.kv_cache
    # 3 layers x 4 kv heads x (16 + 16) dims x 2 bytes (f16) per token
    assert small.kv_cache == 256 * 3 * 4 * 32 * 2
    assert small.weights == large.weights == single.stat().st_size
    assert large.total == large.weights + large.kv_cache + large.compute


def test_n_ctx_zero_means_the_model_context(single):
    assert estimate(single, n_ctx=0).n_ctx == 256


def test_flash_attention_needs_no_score_matrix(single):
    assert estimate(single, n_ctx=512, flash_attn=True).compute < estimate(single, n_ctx=512).compute


def test_mmproj_counts_as_weights(single, tmp_path):
    from modelfix.testing.gguf import write_mmproj

    mmproj = write_mmproj(tmp_path / "mmproj.gguf")
    with_it = estimate(single, n_ctx=128, mmproj_path=mmproj)
    assert with_it.weights == single.stat().st_size + mmproj.stat().st_size


def test_not_a_gguf_file(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ModelfixError, match="not a GGUF file"):
        read_header(bogus)


def test_estimate_is_close_to_what_llama_cpp_takes(tmp_path):
    import llama_cpp

    (path,) = write_tiny_model(tmp_path / "wide.gguf", target_bytes=48_000_000, qtype="F32")
    expected = estimate(path, n_ctx=512).total
    gc.collect()
    before = rss()
    # use_mmap=False: weights are copied into resident memory, so RSS sees them.
    llm = llama_cpp.Llama(str(path), n_ctx=512, use_mmap=False, verbose=False)
    taken = rss() - before
    llm.close()
    assert 0.7 * expected <= taken <= 1.3 * expected, (taken, expected)


def test_memory_capacity_is_ram_on_this_cpu_build():
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory_capacity(offload=False) == ram
    # No GPU here: asking for VRAM falls back to RAM. (On a GPU machine it is
    # the total memory of the GPU devices ggml reports.)
    assert memory_capacity(offload=True) == ram


@pytest.mark.parametrize("asked", [1, 100, 300, 513])
def test_the_context_is_rounded_up_as_llama_cpp_rounds_it(single, asked):
    import llama_cpp

    llm = llama_cpp.Llama(str(single), n_ctx=asked, verbose=False)
    try:
        assert estimate(single, n_ctx=asked).n_ctx == llm.n_ctx()
    finally:
        llm.close()


def test_tensor_table_gives_every_tensor_its_bytes(single):
    header = read_header(single)
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(single).tensors}
    for i in range(3):
        assert header.layer_bytes[i] == sum(n for name, n in tensors.items() if name.startswith(f"blk.{i}."))
    assert header.output_bytes == tensors["output.weight"] + tensors["output_norm.weight"]
    assert header.embd_bytes == header.input_bytes == tensors["token_embd.weight"]
    assert not header.tied_output


@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4, -1])
def test_gpu_share_follows_llama_cpp_layer_order(single, layers):
    """k layers: the output layer first, then the last k - 1 blocks (llama.cpp's load_tensors)."""
    header = read_header(single)
    est = estimate(single, n_ctx=256, n_gpu_layers=layers, offload=True)
    k = 4 if layers == -1 else layers
    blocks = sum(header.layer_bytes[4 - k :]) if k else 0
    assert est.gpu_weights == blocks + (header.output_bytes if k else 0)
    assert est.gpu_kv == est.kv_cache * max(k - 1, 0) // 3
    assert est.gpu_layers == k
    assert est.ram == est.weights - est.gpu_weights + est.kv_cache - est.gpu_kv + est.compute
    assert estimate(single, n_ctx=256, n_gpu_layers=layers).gpu == 0  # a build that cannot offload


_BUFFER = re.compile(r"CPU (KV|compute) buffer size =\s+([\d.]+) MiB")
_LOAD = (
    "import sys, llama_cpp\n"
    "llama_cpp.Llama(sys.argv[1], n_ctx=int(sys.argv[2]), flash_attn=sys.argv[3] == '1', "
    "n_ubatch=int(sys.argv[4]), n_batch=int(sys.argv[4]), n_gpu_layers=0, verbose=True).close()\n"
)


def llama_cpp_buffers(path: Path, n_ctx: int, flash_attn: bool, n_ubatch: int) -> dict[str, float]:
    """The KV and compute buffers (MiB) llama.cpp reports for a load (its verbose log, in a child)."""
    args = [str(path), str(n_ctx), "1" if flash_attn else "0", str(n_ubatch)]
    log = subprocess.run([sys.executable, "-c", _LOAD, *args], capture_output=True, text=True, timeout=120).stderr
    found: dict[str, float] = {}
    for kind, mib in _BUFFER.findall(log):
        found[kind] = found.get(kind, 0.0) + float(mib)  # an SWA model has two KV caches
    return found


@pytest.mark.parametrize(
    ("n_ctx", "flash_attn", "n_ubatch"), [(512, False, 512), (4096, False, 512), (4096, True, 512), (2048, False, 256)]
)
def test_kv_and_compute_match_the_buffers_llama_cpp_allocates(tmp_path, n_ctx, flash_attn, n_ubatch):
    (path,) = write_tiny_model(tmp_path / "m.gguf", n_layer=3, n_embd=128, n_head=4, n_ff=384)
    est = estimate(path, n_ctx=n_ctx, flash_attn=flash_attn, n_ubatch=n_ubatch)
    real = llama_cpp_buffers(path, n_ctx, flash_attn, n_ubatch)
    assert est.kv_cache == real["KV"] * 2**20
    assert est.compute == pytest.approx(real["compute"] * 2**20, rel=0.1)


@pytest.mark.pretrained
def test_estimate_of_the_real_model_matches_llama_cpp(tmp_path_factory):
    """Gemma 3 270M: 18 layers of SWA and global attention, tied embeddings, 262k vocabulary (512 MiB of logits)."""
    from modelfix.testing import pretrained

    if not pretrained.available():
        pytest.skip("the pretrained model's package is not installed")
    path = pretrained.pretrained_gguf(tmp_path_factory.getbasetemp() / "pretrained")
    header = read_header(path)
    assert header.tied_output and header.n_vocab == 262144
    est = estimate(path, n_ctx=1024)
    real = llama_cpp_buffers(path, 1024, False, 512)
    assert est.kv_cache == real["KV"] * 2**20
    assert est.compute == pytest.approx(real["compute"] * 2**20, rel=0.05)
    full = estimate(path, n_ctx=1024, n_gpu_layers=-1, offload=True)
    assert full.gpu_weights == sum(header.layer_bytes) + header.embd_bytes  # a copy of the tied embeddings
