"""Errors: context is added to the exception that was raised, never by making a new one."""

from __future__ import annotations

import pickle
import traceback

import pytest

import modelfix
from modelfix.errors import NetworkError, NoRoom, OfflineError, SourceError
from modelfix.testing.hub import Fault


def _fails() -> None:
    raise NetworkError("https://hub/x.gguf: HTTP 502", url="https://hub/x.gguf")


def test_add_context_keeps_the_type_the_attributes_and_the_traceback():
    with pytest.raises(NetworkError) as info:
        try:
            _fails()
        except NetworkError as exc:
            exc.add_context("chat: x.gguf", suffix=" (also failed: y.gguf)", model="chat", file="x.gguf", url="other")
            raise

    error = info.value
    assert str(error) == "chat: x.gguf: https://hub/x.gguf: HTTP 502 (also failed: y.gguf)"
    assert (error.model, error.file, error.url) == ("chat", "x.gguf", "https://hub/x.gguf")  # set ones are kept
    assert "_fails" in "".join(traceback.format_tb(error.__traceback__))  # where it was raised, still there


def test_errors_survive_pickling_with_their_attributes():
    """What crosses a process boundary (a subprocess, an xdist worker) keeps what it says."""
    error = pickle.loads(pickle.dumps(OfflineError("not cached", model="chat", file="x.gguf")))
    room = pickle.loads(pickle.dumps(NoRoom("needs 3 B", needed=3, budget=2.0, held=1)))

    assert (type(error), str(error), error.model, error.file) == (OfflineError, "not cached", "chat", "x.gguf")
    assert (str(room), room.needed, room.budget, room.held) == ("needs 3 B", 3, 2.0, 1)


def test_a_failed_download_names_its_model_and_file(lock, hub, monkeypatch):
    monkeypatch.setenv("MODELFIX_RETRIES", "1")
    hub.inject("org/tiny", "tiny-Q4_0.gguf", Fault.status(502), times=None)

    with pytest.raises(NetworkError) as info:
        modelfix.sync(["chat"], lock)

    assert (info.value.model, info.value.file) == ("chat", "tiny-Q4_0.gguf")
    assert str(info.value).startswith("chat: tiny-Q4_0.gguf: ")


def test_a_source_that_fails_while_locking_names_its_model(workdir):
    from modelfix.locking import add

    with pytest.raises(SourceError) as info:
        add("broken", "./nowhere.gguf", workdir / "model-lock.toml")

    assert info.value.model == "broken" and str(info.value).startswith("model 'broken' (")


def test_a_model_name_not_in_the_lockfile_names_it_and_the_lockfile(lock):
    with pytest.raises(modelfix.LockError) as info:
        modelfix.load("chatt", lock)

    assert (info.value.model, info.value.file) == ("chatt", str(lock))
    assert str(info.value).startswith(f"no model named 'chatt' in {lock} (models: ")


def test_cancelled_is_exported_and_raised_by_a_cancelled_sync(lock, hub):
    import threading

    cancel = threading.Event()
    cancel.set()

    with pytest.raises(modelfix.Cancelled) as info:
        modelfix.sync(["chat"], lock, cancel=cancel)

    assert isinstance(info.value, modelfix.ModelfixError) and info.value.model == "chat"


def test_messages_and_urls_lose_tokens_and_url_credentials(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_TheUsersOwnToken1234")
    error = NetworkError(
        "https://me:s3cret@mirror.example/org/x/resolve/main/x.gguf with hf_TheUsersOwnToken1234: HTTP 502",
        url="https://me:s3cret@mirror.example/x.gguf",
    )
    error.add_context("chat: https://me:s3cret@mirror.example/api")

    masked = "https://***@mirror.example"
    assert str(error) == f"chat: {masked}/api: {masked}/org/x/resolve/main/x.gguf with ***: HTTP 502"
    assert error.url == "https://***@mirror.example/x.gguf"
    assert (
        str(SourceError("hf://org/repo@main/x.gguf and s3://bucket/a@b"))
        == "hf://org/repo@main/x.gguf and s3://bucket/a@b"
    )
