"""The two hashes of a blob, in one pass or re-read from disk, agree with the reference libraries."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import xxhash

from modelfix.hashing import EMPTY_SHA256, Digest, file_identity, hash_file


@pytest.mark.parametrize("size", [0, 1, 4096, 9 * 1024 * 1024 + 7])
def test_hash_file_matches_hashlib_and_xxhash(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)

    result = hash_file(path)

    assert result.size == size
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.xxh3 == xxhash.xxh3_128(data).hexdigest()


def test_digest_fed_in_pieces_equals_the_whole_file(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 11)
    (tmp_path / "f").write_bytes(data)
    digest = Digest()
    for start in range(0, len(data), 65536):
        digest.update(memoryview(data)[start : start + 65536])

    assert digest.result() == hash_file(tmp_path / "f")


def test_only_the_asked_hashes_are_computed(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert hash_file(tmp_path / "f", sha256=False).sha256 is None
    assert hash_file(tmp_path / "f", xxh3=False).xxh3 is None
    assert hash_file(tmp_path / "f", xxh3=False).sha256 == hashlib.sha256(b"abc").hexdigest()
    assert Digest().result().sha256 == EMPTY_SHA256


def test_identity_moves_when_the_bytes_are_rewritten(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    before = file_identity(path)
    os.utime(path, ns=(before[3] + 10**9, before[3] + 10**9))  # a write also moves mtime

    assert file_identity(path) != before
    assert file_identity(path)[:3] == before[:3]


def test_identity_moves_when_bytes_are_rewritten_and_the_mtime_put_back(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"verified bytes")
    before = file_identity(path)
    stamp = os.stat(path)
    time.sleep(0.01)
    path.write_bytes(b"tampered bytes")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    assert file_identity(path)[:4] == before[:4]  # what the mtime alone would say: unchanged
    assert file_identity(path) != before
