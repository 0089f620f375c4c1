"""``modelfix inspect``: pins, cache state, GGUF header, settings and memory, never the network."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from modelfix.lockfile import Lockfile


def _json(run_cli, *args: str) -> dict:
    code, out, err = run_cli("inspect", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def _header_field(path: str, key: str):
    """A header value read with the gguf package's own reader: an oracle independent of modelfix."""
    field = gguf.GGUFReader(path).fields[key]
    return field.contents()


def test_before_sync_it_lists_the_pins_and_says_how_to_fetch(run_cli, lock, hub):
    hub.clear_log()
    code, out, err = run_cli("inspect", "chat")

    assert code == 0, err
    assert out.startswith(f"chat  {lock}:")
    entry = Lockfile.load(lock).entry("chat")
    assert f"@ {entry.revision[:12]}" in out
    for pin in entry.files:
        row = next(line for line in out.splitlines() if pin.path in line)
        assert row.split()[0] == pin.role and row.endswith("missing") and pin.sha256[:12] in row
    assert "`modelfix sync chat`" in out
    assert hub.requests == []  # inspecting never downloads


def test_after_sync_it_reads_the_header_without_a_request(run_cli, lock, hub):
    assert run_cli("sync", "chat")[0] == 0
    hub.clear_log()
    report = _json(run_cli, "chat")

    assert hub.requests == []
    assert report["cache"] == "cached" and all(f["cached"] for f in report["files"])
    view = report["view"]
    assert Path(view).name == "tiny-Q4_0.gguf" and Path(view).is_file()
    g = report["gguf"]
    assert g["architecture"] == _header_field(view, "general.architecture")
    assert g["n_layer"] == _header_field(view, f"{g['architecture']}.block_count")
    assert g["n_ctx_train"] == _header_field(view, f"{g['architecture']}.context_length")
    expected_type = gguf.LlamaFileType(_header_field(view, "general.file_type")).name
    assert expected_type.endswith(g["file_type"])


def test_n_ctx_changes_the_settings_and_the_kv_cache_estimate(run_cli, lock):
    assert run_cli("sync", "chat")[0] == 0
    small, large = _json(run_cli, "chat", "--n-ctx", "256"), _json(run_cli, "chat", "--n-ctx", "1024")

    assert large["settings"]["n_ctx"] == {"value": 1024, "from": "--n-ctx"}
    assert large["memory"]["n_ctx"] == 1024 and small["memory"]["n_ctx"] == 256
    assert large["memory"]["kv_cache"] == 4 * small["memory"]["kv_cache"]
    assert (
        large["memory"]["weights"]
        == small["memory"]["weights"]
        == sum(f["size"] for f in large["files"] if f["role"] == "model")
    )


def test_a_split_model_shows_every_part_and_the_part_count(run_cli, lock):
    assert run_cli("sync", "split")[0] == 0
    code, out, err = run_cli("inspect", "split")

    assert code == 0, err
    parts = [line.split()[1] for line in out.splitlines() if line.lstrip().startswith("model ")]
    assert parts == [f"tiny-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert "· 3 parts ·" in out


def test_lockfile_settings_show_where_they_come_from(run_cli, lock):
    text = lock.read_text().replace("[models.chat]\n", "[models.chat]\nn_ctx = 384\nseed = 7\n")
    lock.write_text(text)
    code, out, err = run_cli("inspect", "chat")

    assert code == 0, err
    assert "n_ctx 384 (lockfile)" in out and "seed 7 (lockfile)" in out


def test_an_edited_source_is_flagged_as_needing_a_lock(run_cli, lock):
    lock.write_text(lock.read_text().replace('source = "org/tiny:Q4_0"', 'source = "org/tiny:Q8_0"'))
    code, out, _ = run_cli("inspect", "chat")

    assert code == 0
    assert "source changed since it was pinned: run `modelfix lock`" in out


@pytest.mark.parametrize("args", [["nope"], ["chat", "nope"]])
def test_an_unknown_name_is_one_line_naming_the_models(run_cli, lock, args):
    code, out, err = run_cli("inspect", *args)

    assert code == 1 and out == ""
    assert err.strip() == (
        f"error: no model named 'nope' in {lock} (models: chat, split). Add it with `modelfix add nope ORG/REPO:TAG`."
    )


def test_it_says_how_a_load_would_repack(run_cli, lock, monkeypatch, tmp_path):
    from modelfix import probe

    report = _json(run_cli, "chat")
    assert report["backend"]["repack"] in ("on", "off") and report["backend"]["verdict"]["key"] == probe.probe_key()
    assert report["settings"]["repack"] == {"value": "auto", "from": "default"}

    monkeypatch.setattr(probe, "_MEMO", {})
    # Stands in for the AMX crash (this CPU has none): the probe's child dies with repacking on.
    monkeypatch.setenv("MODELFIX_PROBE_FAULT", "crash-with-repack")
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / "other-cache"))
    code, out, _ = run_cli("inspect", "chat")
    assert code == 0
    assert out.splitlines()[-1] == (
        "  backend   repack off: llama.cpp's repacked kernels crash on this CPU (died by SIGSEGV with repacking on); "
        "loads run without"
    )

    monkeypatch.setenv("MODELFIX_REPACK", "on")
    report = _json(run_cli, "chat")
    assert report["backend"] == {
        "repack": "on",
        "verdict": None,
        "text": "repack on (set explicitly; the backend probe is not consulted)",
    }
