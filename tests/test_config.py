"""Cache settings: arguments beat the environment, which beats defaults; read when used."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from modelfix.config import CacheSettings
from modelfix.errors import CacheError


def test_environment_is_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / "a"))
    assert CacheSettings.resolve().root == tmp_path / "a"
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / "b"))
    assert CacheSettings.resolve().root == tmp_path / "b"


def test_a_relative_or_default_root_follows_the_working_folder_and_xdg(monkeypatch, tmp_path):
    for folder in ("a", "b", "xdg-a", "xdg-b"):
        (tmp_path / folder).mkdir()
    monkeypatch.setenv("MODELFIX_CACHE_DIR", "cache")
    monkeypatch.chdir(tmp_path / "a")
    assert CacheSettings.resolve().root == tmp_path / "a" / "cache"
    monkeypatch.chdir(tmp_path / "b")
    assert CacheSettings.resolve().root == tmp_path / "b" / "cache"

    monkeypatch.delenv("MODELFIX_CACHE_DIR")
    for xdg in ("xdg-a", "xdg-b"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / xdg))
        assert CacheSettings.resolve().root == tmp_path / xdg / "modelfix"


def test_arguments_win(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELFIX_OFFLINE", "1")
    monkeypatch.setenv("MODELFIX_CACHE_MAX_SIZE", "1GB")
    settings = CacheSettings.resolve(cache_dir=tmp_path, offline=False, max_size="2GB")
    assert (settings.root, settings.offline, settings.max_size) == (tmp_path, False, 2e9)


@pytest.mark.parametrize("var", ["MODELFIX_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_switches(monkeypatch, var):
    monkeypatch.setenv(var, "1")
    assert CacheSettings.resolve().offline


def test_defaults(monkeypatch):
    monkeypatch.delenv("MODELFIX_CACHE_DIR")
    settings = CacheSettings.resolve()
    assert settings.root.name == "modelfix" and settings.max_size == math.inf and settings.remote is None


@pytest.mark.parametrize("cap", ["huge", "-5", "nan", "0"])
def test_bad_cap_is_a_clear_error(monkeypatch, cap):
    monkeypatch.setenv("MODELFIX_CACHE_MAX_SIZE", cap)
    with pytest.raises(CacheError, match=f"MODELFIX_CACHE_MAX_SIZE '{cap}': use bytes or a size like 500MB"):
        CacheSettings.resolve()


@pytest.mark.parametrize("where", ["the folder", "a folder above it"])
def test_a_cache_dir_that_is_a_file_is_a_clear_error(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    root = blocker if where == "the folder" else blocker / "cache"

    with pytest.raises(
        CacheError, match=f"cannot use {root} as the cache folder: it .* is a file. Set MODELFIX_CACHE_DIR"
    ):
        CacheSettings.resolve(cache_dir=root)


def test_bad_max_size_argument_names_the_option_not_the_variable(monkeypatch):
    monkeypatch.delenv("MODELFIX_CACHE_MAX_SIZE", raising=False)
    with pytest.raises(CacheError, match="--max-size '2XB'"):
        CacheSettings.resolve(max_size="2XB")


def test_read_only_caches_come_in_order_without_repeats_or_the_store_itself(monkeypatch, tmp_path):
    a, b, store = tmp_path / "a", tmp_path / "b", tmp_path / "store"
    monkeypatch.setenv("MODELFIX_READONLY_CACHES", os.pathsep.join([str(a), "", str(b), str(a), str(store)]))
    assert CacheSettings.resolve(cache_dir=store).layers == (a, b)
    assert CacheSettings.resolve(cache_dir=store, readonly_caches=[b, "~/x"]).layers == (b, Path.home() / "x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELFIX_READONLY_CACHES", "a")  # relative: to the working folder, when used
    assert CacheSettings.resolve(cache_dir=store).layers == (a,)
