"""Tests for modelfix.testing.gguf: the tiny GGUF files load and run in llama.cpp."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import pytest

from modelfix.testing.gguf import (
    QTYPES,
    VOCAB,
    TinyModelSpec,
    main,
    tag_seed,
    tiny_repo_files,
    write_mmproj,
    write_preset,
    write_tiny_model,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def field(path: Path, key: str):
    return gguf.GGUFReader(path).fields[key].contents()


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    (path,) = write_tiny_model(tmp_path_factory.mktemp("single") / "tiny-Q4_0.gguf", seed=0)
    return path


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> list[Path]:
    return write_tiny_model(tmp_path_factory.mktemp("split") / "tiny-Q4_0.gguf", seed=0, split_max_tensors=8)


def generate(plain_llama, path: Path, prompt: str = "Hello") -> str:
    llm = plain_llama(path, n_ctx=128, verbose=False, seed=0)
    try:
        return llm(prompt, max_tokens=8, temperature=0)["choices"][0]["text"]
    finally:
        llm.close()


def test_single_file_loads_generates_and_repeats(llama_cpp, plain_llama, single: Path) -> None:
    spec = TinyModelSpec()
    llm = plain_llama(single, n_ctx=128, verbose=False, seed=0)
    try:
        assert llm.n_vocab() == spec.n_vocab
        assert llm.n_embd() == spec.n_embd
        assert llama_cpp.llama_model_n_ctx_train(llm.model) == spec.n_ctx_train
        assert llm.metadata["general.architecture"] == "llama"
        first = llm("Hello", max_tokens=8, temperature=0)
        # Specials and byte tokens have zero logits, so decoding never stops early.
        assert first["usage"]["completion_tokens"] == 8
        assert first["choices"][0]["text"].strip()
        llm.reset()
        again = llm("Hello", max_tokens=8, temperature=0)
        assert again["choices"][0]["text"] == first["choices"][0]["text"]
        assert llm.tokenize(b"Hello world") == [1, VOCAB[0].index("\u2581Hello"), VOCAB[0].index("\u2581world")]
        assert llm.detokenize(llm.tokenize(b"Hello world", add_bos=False)) == b" Hello world"
    finally:
        llm.close()


def test_chat_completion_uses_embedded_template(plain_llama, single: Path) -> None:
    llm = plain_llama(single, n_ctx=128, verbose=False, seed=0)
    try:
        assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
        out = llm.create_chat_completion(messages=[{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0)
        assert out["choices"][0]["message"]["role"] == "assistant"
        assert out["choices"][0]["message"]["content"]
    finally:
        llm.close()


def test_split_set_names_and_metadata(split: list[Path]) -> None:
    assert [p.name for p in split] == [f"tiny-Q4_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert all(p.is_file() for p in split)
    assert not (split[0].parent / "tiny-Q4_0.gguf").exists()
    readers = [gguf.GGUFReader(p) for p in split]
    assert [len(r.tensors) for r in readers] == [8, 8, 5]
    assert [r.fields["split.no"].contents() for r in readers] == [0, 1, 2]
    assert {r.fields["split.count"].contents() for r in readers} == {3}
    assert readers[0].fields["general.architecture"].contents() == "llama"


def test_split_loads_from_first_part_and_matches_unsplit(plain_llama, single: Path, split: list[Path]) -> None:
    assert generate(plain_llama, split[0]) == generate(plain_llama, single)


@pytest.mark.parametrize("parts", [2, 3, 8, 21])
def test_split_parts_gives_exactly_that_many(tmp_path: Path, parts: int) -> None:
    files = write_tiny_model(tmp_path / "m.gguf", split_parts=parts)
    assert [p.name for p in files] == [f"m-{i:05d}-of-{parts:05d}.gguf" for i in range(1, parts + 1)]
    assert sum(len(gguf.GGUFReader(p).tensors) for p in files) == TinyModelSpec().n_tensors


def test_split_parts_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "m.gguf", split_parts=TinyModelSpec().n_tensors + 1)
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "m.gguf", split_parts=2, split_max_tensors=4)


def test_deterministic_bytes(tmp_path: Path, single: Path) -> None:
    (same,) = write_tiny_model(tmp_path / "a" / "tiny-Q4_0.gguf", seed=0)
    (other,) = write_tiny_model(tmp_path / "b" / "tiny-Q4_0.gguf", seed=1)
    assert sha256(same) == sha256(single)
    assert sha256(other) != sha256(single)
    assert single.stat().st_size == other.stat().st_size


def test_target_bytes_grows_model(plain_llama, tmp_path: Path) -> None:
    (path,) = write_tiny_model(tmp_path / "big.gguf", target_bytes=3_000_000)
    assert path.stat().st_size >= 3_000_000
    assert field(path, "llama.embedding_length") > 64
    assert generate(plain_llama, path)


def test_mmproj_is_clip(tmp_path: Path) -> None:
    path = write_mmproj(tmp_path / "mmproj-tiny-f16.gguf")
    assert field(path, "general.architecture") == "clip"
    assert len(gguf.GGUFReader(path).tensors) >= 2
    assert sha256(path) == sha256(write_mmproj(tmp_path / "again.gguf"))


def test_preset(tmp_path: Path) -> None:
    text = write_preset(tmp_path / "preset.ini").read_text()
    assert "[*]" in text and "ctx-size = 512" in text and "temp = 0.7" in text


def test_tiny_repo_files_layout(tmp_path: Path) -> None:
    files = tiny_repo_files(tmp_path, split_tags=("Q4_1",), split_parts=4)
    assert sorted(files) == [
        "mmproj-tiny-f16.gguf",
        "preset.ini",
        "tiny-Q4_0.gguf",
        *[f"tiny-Q4_1-{i:05d}-of-00004.gguf" for i in range(1, 5)],
        "tiny-Q8_0.gguf",
    ]
    assert all(p == tmp_path / rel and p.is_file() for rel, p in files.items())
    assert sha256(files["tiny-Q4_0.gguf"]) != sha256(files["tiny-Q8_0.gguf"])
    (expected,) = write_tiny_model(tmp_path / "x" / "m.gguf", seed=tag_seed(0, "Q8_0"), qtype="Q8_0")
    assert sha256(expected) == sha256(files["tiny-Q8_0.gguf"])

    bare = tiny_repo_files(tmp_path / "bare", tags=("F16",), mmproj=False, preset=False, name="m")
    assert list(bare) == ["m-F16.gguf"]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--tags", "Q4_0", "--split-tags", "Q4_1", "--seed", "3"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 + 3 + 1
    assert all(Path(p).is_file() for p in printed)


def test_cli_help_describes_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--tags", "--split-tags", "--split-parts", "--seed", "--name", "--no-mmproj", "--no-preset"):
        line = next(line for line in text.splitlines() if line.strip().startswith(flag))
        described = line.split(flag, 1)[1].split(None, 1)
        # the help text is on the flag's line (after its metavar) or on the next one
        assert len(described) == 2 or text.split(line, 1)[1].splitlines()[1].strip(), flag
    assert "out_dir" in text and "Q4_0" in text and "K-quants" in text


@pytest.mark.parametrize("tag", ["Q4_K_M", "Q2_K", "nope"])
def test_a_type_it_cannot_write_is_refused_before_writing(tmp_path: Path, tag: str, capsys) -> None:
    with pytest.raises(ValueError, match=f"cannot write a tiny model of type '{tag}'.*K-quants"):
        tiny_repo_files(tmp_path / "repo", tags=("Q8_0", tag))
    assert not (tmp_path / "repo").exists()
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "cli"), "--split-tags", tag])
    assert exc.value.code == 2 and "K-quants" in capsys.readouterr().err


@pytest.mark.parametrize("tag", list(QTYPES))
def test_a_file_holds_the_type_its_name_says(plain_llama, tmp_path: Path, tag: str) -> None:
    path = tiny_repo_files(tmp_path, tags=(tag,), mmproj=False, preset=False)[f"tiny-{tag}.gguf"]
    reader = gguf.GGUFReader(path)
    tensor_type, file_type = QTYPES[tag]
    assert reader.fields["general.file_type"].contents() == file_type
    layer_types = {t.tensor_type for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    assert layer_types == {tensor_type}
    assert path.stat().st_size - TinyModelSpec(qtype=tag).tensor_bytes() < 12_000  # header and padding only
    llm = plain_llama(path, n_ctx=128, verbose=False, seed=0)
    try:
        # llama.cpp reads the file type back, as `modelfix inspect` shows it
        assert llm.metadata["general.file_type"] == str(int(file_type))
        assert llm("Hello", max_tokens=4, temperature=0)["usage"]["completion_tokens"] == 4
    finally:
        llm.close()


def test_quantized_needs_whole_blocks() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        TinyModelSpec(n_embd=48, n_head=4, qtype="Q8_0")
    assert TinyModelSpec(n_embd=48, n_head=4, n_ff=96, qtype="F32").n_embd == 48
