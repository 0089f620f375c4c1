"""modelfix.Project: one lockfile and its cache and pool settings, and the module-level API over it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import modelfix
from modelfix.config import CacheSettings
from modelfix.lockfile import Lockfile
from modelfix.locking import add
from modelfix.pool import record as pool_record
from modelfix.project import Project, default_project


def test_the_module_level_calls_keep_one_project_per_lock(lock):
    first = default_project(lock)

    assert default_project(str(lock)) is first  # a str or a Path naming the same file
    assert default_project(None) is default_project(None) is not first
    assert modelfix.path("chat", lock) == first.path("chat")


def test_a_lockfile_object_has_a_project_of_its_own(lock):
    lockfile = Lockfile.load(lock)

    assert default_project(lockfile) is default_project(lockfile)
    assert default_project(lockfile).lockfile is lockfile
    assert modelfix.path("chat", lockfile) == modelfix.path("chat", lock)


def test_settings_left_unset_are_read_at_each_call(lock, tmp_path, monkeypatch):
    first = modelfix.path("chat", lock)
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / "other"))

    second = modelfix.path("chat", lock)  # the same default Project: it reads the variable again

    assert first.is_relative_to(tmp_path / "cache") and second.is_relative_to(tmp_path / "other")
    assert Project(lock, cache_dir=tmp_path / "cache").path("chat") == first  # an argument wins over it


def test_the_lockfile_is_read_again_when_it_changes(lock):
    project = Project(lock)
    assert set(project.lockfile.entries) == {"chat", "split"}

    add("again", "org/tiny:Q8_0", lock)
    past = time.time() - 3600  # past the filesystem's clock tick: its identity alone decides
    os.utime(lock, (past, past))

    assert set(project.lockfile.entries) == {"chat", "split", "again"}
    assert project.path("again").name == "tiny-Q8_0.gguf"


def test_a_derived_project_shares_the_memos_and_changes_only_what_it_is_given(lock, hub):
    project = Project(lock)
    project.files("chat")
    hub.clear_log()

    offline = project.derive(offline=True, load_options={"n_ctx": 256})

    assert offline.cache_settings.offline and not project.cache_settings.offline
    assert offline.files("chat") == project.files("chat") and hub.requests == []
    handle = offline.load("chat")
    record = pool_record(handle)
    assert record.settings.n_ctx == 256 and record.origins["n_ctx"] == "frontend"
    assert project.load("chat", n_ctx=256) is handle  # the same files and settings: the same handle
    modelfix.unload(handle)


def test_cache_care_reports_are_dataclasses_that_say_what_they_did(lock, tmp_path):
    project = Project(lock)
    project.sync()
    stale = CacheSettings.resolve().root / "tmp" / f"{'2' * 64}.partial"
    stale.write_bytes(b"x" * 100)

    dry = project.gc(dry_run=True)
    done = project.gc()

    assert (dry.partials, dry.dry_run, done.partials, done.dry_run) == (1, True, 1, False)
    assert dry.summary().startswith("would remove 0 unused files") and done.summary().startswith("removed 0 unused")
    assert not stale.exists()
    stats = project.stats()
    assert {view.models for view in stats.views} == {("chat",), ("split",)}
    assert {view.state for view in stats.views} == {"pinned"}
    pruned = project.prune("1", dry_run=True)
    assert pruned.evicted == () and pruned.note() is not None  # the lockfile pins everything: nothing may go


def test_the_old_settings_keyword_still_works_and_says_it_is_deprecated(lock, tmp_path):
    settings = CacheSettings.resolve(cache_dir=tmp_path / "elsewhere")

    with pytest.warns(DeprecationWarning, match="cache_settings="):
        found = modelfix.files("chat", lock, settings=settings)

    assert found.view.is_relative_to(tmp_path / "elsewhere")
    assert modelfix.files("chat", lock, cache_settings=settings) == found


def test_push_refuses_before_fetching_anything_without_a_remote(lock, hub):
    hub.clear_log()

    with pytest.raises(modelfix.CacheError, match="MODELFIX_REMOTE"):
        Project(lock).push()

    assert hub.requests == []


def test_a_project_repr_reads_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "model-lock.toml"

    assert str(missing) in repr(Project(missing)) and "nearest" in repr(Project())
    with pytest.raises(modelfix.LockError):
        _ = Project(missing).lockfile


def test_route_and_loaded_go_through_the_project(workdir: Path, lock):
    text = lock.read_text() + '\n[routing]\ndefault = "chat"\n'
    lock.write_text(text)

    assert Project(lock).route("anything") == "chat" == modelfix.route("anything", lock)
    assert Project(lock).loaded() == modelfix.loaded()


def test_a_model_whose_weights_exceed_the_budget_is_refused_before_anything_is_fetched(lock, hub, monkeypatch):
    weights = sum(p.size for p in Lockfile.load(lock).entry("chat").model_files)
    monkeypatch.setenv("MODELFIX_MEMORY_BUDGET", str(weights - 1))
    hub.clear_log()

    with pytest.raises(modelfix.MemoryBudgetError, match=r"'chat': its weights alone are .* MODELFIX_MEMORY_BUDGET"):
        Project(lock).load("chat")

    assert hub.requests == []  # the pinned sizes said so: not one byte was fetched
    monkeypatch.setenv("MODELFIX_MEMORY_BUDGET", "inf")
    assert Project(lock).load("chat")("Hi", max_tokens=1)["choices"]
