"""The backend probe (modelfix.probe): a quantized decode in a child, its verdict, and loads that follow it.

This machine may not be the one whose CPU crashes: llama.cpp's AMX kernels die (SIGSEGV at
``ldtilecfg``) only on hosts with AMX where the tile state is not granted to every thread. Where
that cannot happen, ``MODELFIX_PROBE_FAULT`` (read only by the probe's child) stands in for the
crash: the child kills itself with SIGSEGV where its decode would run. The parent's logic (retry
with repacking off, the verdict, the cache, the error) is then the real one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modelfix import probe
from modelfix.errors import BackendError, SettingsError
from modelfix.pool import Pool
from modelfix.settings import resolve_settings
from modelfix.testing.gguf import write_tiny_model


def _system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode()


def _amx_host() -> bool:
    """The host lists AMX and this build has llama.cpp's AMX backend: where the real crash can happen."""
    flags = probe._cpu_flags().split()
    return {"amx_int8", "amx_tile"} <= set(flags) and "AMX_INT8 = 1" in _system_info()


REPACK_BUFFER = ("CPU_REPACK model buffer size", "AMX model buffer size")


@pytest.fixture
def fresh(monkeypatch):
    """No verdict in this process's memory (restored after, so other tests do not probe again)."""
    monkeypatch.setattr(probe, "_MEMO", {})
    monkeypatch.setattr(probe, "_KEPT", {})
    monkeypatch.setattr(probe, "_ANNOUNCED", set())
    monkeypatch.setattr(probe, "_KEY", [])
    return probe


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "cache"


def _child(model: Path, repack: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfix.probe", "--child", str(model), "--repack", repack, "--verbose"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory) -> Path:
    return probe.write_probe_model(tmp_path_factory.mktemp("probe") / "probe-Q4_0.gguf")


# --- the child reaches the path that crashes ----------------------------------------------------


def test_the_probe_model_is_repacked_by_llama_cpp(probe_model):
    done = _child(probe_model, "on")
    if done.returncode < 0:
        # Only where the crash is real: the AMX host of the issue.
        assert _amx_host(), f"the probe's child died by signal {-done.returncode} on a host without AMX"
        return
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stderr
    assert any(line in log for line in REPACK_BUFFER), log[-3000:]
    assert "repack tensor blk.0.attn_q.weight" in log  # "repack: repack tensor ... with q4_0_8x8", or "amx repack ..."
    assert json.loads(done.stdout)["tokens"] == 4


def test_without_repacking_no_weight_is_repacked(probe_model):
    done = _child(probe_model, "off")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not any(line in done.stderr for line in REPACK_BUFFER)
    assert "repack tensor" not in done.stderr and "CPU_Mapped model buffer size" in done.stderr


def test_on_an_amx_host_the_child_dies_with_repacking_on(probe_model):
    if not _amx_host():
        pytest.skip("needs a CPU with amx_int8/amx_tile and a llama.cpp build with AMX_INT8 = 1 (the crash of issue 9)")
    done = _child(probe_model, "on")
    assert done.returncode < 0, "llama.cpp's AMX kernels ran: this host grants the tile state, nothing to protect"
    assert _child(probe_model, "off").returncode == 0


# --- verdicts -----------------------------------------------------------------------------------


def test_this_host_is_probed_once_then_read_from_the_cache(fresh, root):
    found = probe.verdict(root)

    expected = "off" if _amx_host() else "on"
    assert (found.repack, found.cached) == (expected, False)
    assert 0 < found.seconds < 60 and found.build.startswith("llama-cpp-python ") and "CPU :" in found.build
    saved = Path(found.path)
    assert saved == root / "probe" / f"{found.key}.json" and json.loads(saved.read_text())["repack"] == expected
    assert saved.stat().st_mode & 0o777 == 0o644  # readable by the other users of a shared cache
    assert probe.verdict(root) is found  # this process remembers it

    # A later start reads the file and starts no child: _run_child would fail the test.
    code = (
        "import sys, pathlib; from modelfix import probe\n"
        "probe._run_child = lambda *a, **k: sys.exit('probed again')\n"
        f"v = probe.verdict(pathlib.Path({str(root)!r}))\n"
        "print(v.repack, v.cached)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == [expected, "True"], done.stderr


def test_each_cache_a_process_uses_gets_the_verdict_from_one_probe(fresh, root, tmp_path, monkeypatch):
    first = probe.verdict(root)
    monkeypatch.setattr(probe, "_probe", lambda *args: pytest.fail("probed twice in one process"))

    other = tmp_path / "other-cache"
    found = probe.verdict(other)

    # `modelfix doctor` on the other cache shows that cache's file, and a later process reads it there.
    assert found.path == str(other / "probe" / f"{first.key}.json") and found.repack == first.repack
    assert json.loads(Path(found.path).read_text())["repack"] == first.repack
    assert probe.verdict(root).path == first.path


def test_a_crash_with_repacking_on_turns_it_off_and_loads_say_so(fresh, root, monkeypatch, caplog):
    # Stands in for the AMX crash, which cannot happen on this CPU: the child dies by SIGSEGV with repacking on.
    monkeypatch.setenv("MODELFIX_PROBE_FAULT", "crash-with-repack")

    found = probe.verdict(root)

    assert found.repack == "off" and found.crashed == "died by SIGSEGV with repacking on"
    assert "repack off" in found.summary() and "crash" in found.summary()
    assert json.loads(Path(found.path).read_text())["repack"] == "off"
    with caplog.at_level(logging.WARNING, logger="modelfix"):
        assert probe.use_repack("auto", root) is False
        assert probe.use_repack("auto", root) is False
        assert probe.use_repack("on", root) is True  # an explicit choice wins over the verdict
    said = [r.getMessage() for r in caplog.records if "repack off" in r.getMessage()]
    assert len(said) == 1 and "SIGSEGV" in said[0] and "MODELFIX_REPACK" in said[0]


def test_a_crash_either_way_is_a_clear_error_not_a_segfault(fresh, root, monkeypatch, tmp_path):
    monkeypatch.setenv("MODELFIX_PROBE_FAULT", "crash-always")
    (model,) = write_tiny_model(tmp_path / "m-Q4_0.gguf")
    pool = Pool()

    with pytest.raises(BackendError) as err:
        pool.acquire(model, "key", "chat", probe_root=root)

    message = str(err.value)
    assert "llama-cpp-python" in message and "CPU :" in message  # the build
    assert "died by SIGSEGV with repacking on; died by SIGSEGV with repacking off" in message  # what crashed
    assert probe.PORTABLE_BUILD in message and "-DGGML_NATIVE=OFF" in message  # the fix
    assert probe.verdict(root).repack == "broken" and not probe.verdict(root).usable
    assert pool.loaded() == []
    # repack = off is the user's explicit choice: it loads (here, where nothing really crashes).
    assert pool.acquire(model, "key", "chat", probe_root=root, repack="off")("Hello", max_tokens=2)["choices"]


def test_a_child_that_hangs_times_out_and_is_not_cached(fresh, root, monkeypatch):
    monkeypatch.setenv("MODELFIX_PROBE_FAULT", "hang")
    monkeypatch.setenv("MODELFIX_PROBE_TIMEOUT", "1.5")

    with pytest.raises(BackendError, match=r"no answer within 1.5 s.*raise MODELFIX_PROBE_TIMEOUT"):
        probe.use_repack("auto", root)
    assert not list((root / "probe").glob("*.json"))  # a slow machine is no proof: the next process asks again


def test_a_child_that_cannot_run_names_the_failure(fresh, root, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")

    with pytest.raises(BackendError, match=r"backend probe .* failed: exit status 1.*MODELFIX_REPACK=on"):
        probe.verdict(root)
    assert not (root / "probe").exists() or not list((root / "probe").glob("*.json"))


def test_a_cache_that_cannot_be_written_keeps_the_verdict_in_memory(fresh, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MODELFIX_PROBE_FAULT", "crash-with-repack")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache root should be")

    with caplog.at_level(logging.DEBUG, logger="modelfix"):
        found = probe.verdict(blocked)

    assert found.repack == "off" and found.path is None
    assert any("cannot keep the probe verdict" in r.getMessage() for r in caplog.records)
    assert probe.use_repack("auto", blocked) is False


def test_a_verdict_in_a_read_only_cache_is_used_and_nothing_is_written_anywhere(fresh, root, tmp_path, monkeypatch):
    layer = tmp_path / "image"
    baked = probe._write(layer, probe.Verdict("off", probe.probe_key(), "llama.cpp as built", "died by SIGSEGV"))
    monkeypatch.setattr(probe, "_probe", lambda *args: pytest.fail("probed, though a read-only cache has a verdict"))
    before = sorted(p.stat().st_mtime_ns for p in layer.rglob("*"))

    found = probe.verdict(root, layers=[tmp_path / "absent", layer])

    assert (found.repack, found.cached, found.path) == ("off", True, baked.path)
    assert probe.use_repack("auto", root, [layer]) is False
    assert not root.exists() and sorted(p.stat().st_mtime_ns for p in layer.rglob("*")) == before


def test_the_key_follows_the_build_the_cpu_and_the_kernel(fresh, monkeypatch):
    first = probe.probe_key()
    for name, value in (("_cpu_flags", lambda: "fpu sse amx_tile"), ("_libraries", lambda lib: [("x.so", 1, 2)])):
        with monkeypatch.context() as m:
            m.setattr(probe, name, value)
            m.setattr(probe, "_KEY", [])
            assert probe.probe_key() != first
    with monkeypatch.context() as m:
        m.setattr(probe, "_KEY", [])
        m.setattr(probe.os, "uname", lambda: os.uname_result(("Linux", "h", "0.0-other", "v", "x86_64")))
        assert probe.probe_key() != first
    assert probe.probe_key() == first


def test_a_verdict_file_is_never_read_through_a_link(fresh, root, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELFIX_PROBE_FAULT", "crash-always")
    key = probe.probe_key()
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps({"repack": "on", "key": key, "build": "x", "crashed": "", "seconds": 0}))
    (root / "probe").mkdir(parents=True)
    (root / "probe" / f"{key}.json").symlink_to(planted)

    assert probe.known_verdict(root) is None
    assert probe.verdict(root).repack == "broken"  # probed for real, not taken from the link


def test_a_fifo_in_place_of_the_verdict_does_not_block(fresh, root):
    (root / "probe").mkdir(parents=True)
    os.mkfifo(root / "probe" / f"{probe.probe_key()}.json")
    assert probe.known_verdict(root) is None


# --- loads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("repack", ["on", "off"])
def test_the_repack_setting_reaches_llama_cpp(tmp_path, caplog, repack):
    (model,) = write_tiny_model(tmp_path / "tiny-Q4_0.gguf")
    pool = Pool()

    with caplog.at_level(logging.DEBUG, logger="modelfix.llama_cpp"):
        handle = pool.acquire(model, "k", "tiny", repack=repack)  # loads; no decode (it crashes on AMX hosts)
    log = "\n".join(r.getMessage() for r in caplog.records if r.name == "modelfix.llama_cpp")

    assert handle.model_params.use_extra_bufts is (repack == "on")  # what the handle's Llama was built with
    assert "model buffer size" in log  # llama.cpp's load log did reach us
    if repack == "on":
        assert any(line in log for line in REPACK_BUFFER), log
    else:
        assert not any(line in log for line in REPACK_BUFFER) and "repack tensor" not in log, log
    pool.close()


def test_the_repack_switch_does_not_leak_to_other_threads(tmp_path):
    import threading

    import llama_cpp.llama_cpp as lib

    from modelfix.handle import _without_extra_bufts

    seen = []
    with _without_extra_bufts():
        assert lib.llama_model_default_params().use_extra_bufts is False
        other = threading.Thread(target=lambda: seen.append(lib.llama_model_default_params().use_extra_bufts))
        other.start()
        other.join()
    assert seen == [True] and lib.llama_model_default_params().use_extra_bufts is True


def test_repack_is_part_of_the_pool_key(tmp_path):
    (model,) = write_tiny_model(tmp_path / "tiny-Q4_0.gguf")
    pool = Pool()
    on = pool.acquire(model, "k", "tiny", repack="on")
    off = pool.acquire(model, "k", "tiny", repack="off")
    assert on is not off and pool.acquire(model, "k", "tiny", repack="on") is on
    assert sorted(r.settings.repack for r in pool.loaded()) == ["off", "on"]
    pool.close()


def test_a_bad_repack_value_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELFIX_REPACK", "maybe")
    with pytest.raises(SettingsError, match=r"repack = 'maybe' \(environment variable MODELFIX_REPACK\).*auto"):
        resolve_settings("tiny")


def test_the_fault_knob_is_read_by_the_child_only(probe_model, monkeypatch):
    monkeypatch.setenv("MODELFIX_PROBE_FAULT", "crash-always")
    assert _child(probe_model, "off").returncode == -signal.SIGSEGV
    # The parent's own loads never read it.
    pool = Pool()
    assert pool.acquire(probe_model, "k", "probe", repack="off")("Hello", max_tokens=1)["choices"]
    pool.close()
