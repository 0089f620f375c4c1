"""``modelfix add``, ``lock``, ``lock --upgrade``, ``lock --check`` and ``list``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelfix.lockfile import Lockfile
from modelfix.testing.gguf import write_tiny_model

REPO = "org/tiny"
SECRET = "hf_SecretTokenValue12345"


def test_add_then_lock_again_is_byte_identical(hub, workdir, run_cli):
    code, out, _ = run_cli("add", "chat", f"{REPO}:Q4_0", "--n-ctx", "256")
    assert code == 0 and "Added chat" in out
    lock = workdir / "model-lock.toml"
    first = lock.read_bytes()
    entry = Lockfile.load(lock).entry("chat")
    assert entry.is_pinned and entry.settings == {"n_ctx": 256}
    hub.clear_log()
    code, out, _ = run_cli("lock")
    assert code == 0 and "up to date" in out
    assert lock.read_bytes() == first
    assert hub.count() == 0, "pinned entries need no network"


def test_pin_stays_put_until_upgrade(hub, workdir, run_cli, tmp_path):
    run_cli("add", "chat", REPO)
    run_cli("add", "split", f"{REPO}:Q4_1")
    before = Lockfile.load(workdir / "model-lock.toml")
    (new_weights,) = write_tiny_model(tmp_path / "tiny-Q8_0.gguf", seed=7, qtype="Q8_0")
    new_commit = hub.commit(REPO, {"tiny-Q8_0.gguf": new_weights}, message="new weights")
    assert run_cli("lock")[0] == 0
    assert Lockfile.load(workdir / "model-lock.toml").entry("chat") == before.entry("chat")
    code, out, _ = run_cli("lock", "--upgrade", "--model", "chat")
    assert code == 0 and "Updated chat" in out
    after = Lockfile.load(workdir / "model-lock.toml")
    assert after.entry("chat").revision == new_commit
    assert after.entry("split") == before.entry("split"), "--model limits the upgrade"


def test_one_lock_asks_the_hub_once_per_repository(hub, workdir, run_cli, tiny_files):
    for name, tag in (("q4", "Q4_0"), ("q8", "Q8_0"), ("split", "Q4_1")):
        run_cli("add", name, f"{REPO}:{tag}")
    before = Lockfile.load(workdir / "model-lock.toml")
    new_commit = hub.commit(REPO, {"notes.txt": b"unrelated change"}, message="docs")
    hub.clear_log()

    code, _out, err = run_cli("lock", "--upgrade")
    assert code == 0, err
    after = Lockfile.load(workdir / "model-lock.toml")
    assert {e.revision for e in after.entries.values()} == {new_commit}
    assert [e.files for e in after.entries.values()] == [e.files for e in before.entries.values()]
    asked = sorted(r.path.split("/")[5] if r.path.startswith("/api/") else r.filename for r in hub.requests)
    assert asked == ["preset.ini", "revision", "tree"]  # three models, one look at the repository


def test_check_finds_unpinned_and_stale_entries_offline(hub, workdir, run_cli):
    run_cli("add", "chat", REPO)
    assert run_cli("lock", "--check")[0] == 0
    lock = workdir / "model-lock.toml"
    lock.write_text(
        lock.read_text().replace(f'source = "{REPO}"', f'source = "{REPO}:Q8_0"')
        + '\n[models.new]\nsource = "org/other"\n'
    )
    hub.clear_log()
    code, _, err = run_cli("lock", "--check")
    assert code == 1
    assert "chat: source changed from 'org/tiny' to 'org/tiny:Q8_0'" in err
    assert "new: is not pinned" in err
    assert "run `modelfix lock`" in err
    assert hub.count() == 0


def test_a_failing_add_writes_nothing(hub, workdir, run_cli):
    run_cli("add", "chat", REPO)
    lock = workdir / "model-lock.toml"
    before = lock.read_bytes()
    code, _, err = run_cli("add", "other", f"{REPO}:Q3_K_S")
    assert code == 1 and "matches no model file" in err
    assert err.startswith(f"error: model 'other' ({lock}): "), "named like `lock` names it"
    assert lock.read_bytes() == before
    assert sorted(p.name for p in workdir.iterdir()) == ["model-lock.toml"]


def test_a_failing_lock_keeps_every_pin(hub, workdir, run_cli):
    run_cli("add", "chat", REPO)
    lock = workdir / "model-lock.toml"
    lock.write_text(lock.read_text() + '\n[models.broken]\nsource = "org/missing:Q4_0"\n')
    before = lock.read_bytes()
    code, _, err = run_cli("lock", "--upgrade")
    assert code == 1 and "model 'broken'" in err and "org/missing" in err
    assert lock.read_bytes() == before


def test_first_add_creates_the_lockfile(hub, workdir, run_cli):
    assert not (workdir / "model-lock.toml").exists()
    assert run_cli("add", "chat", REPO)[0] == 0
    assert (workdir / "model-lock.toml").read_text().startswith("# Models pinned by modelfix")


def test_list_shows_each_model(hub, workdir, run_cli):
    run_cli("add", "chat", REPO)
    run_cli("add", "split", f"{REPO}:Q4_1")
    code, out, _ = run_cli("list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:5] == ["NAME", "SOURCE", "REVISION", "FILES", "SIZE"]
    assert lines[2].split()[:4] == [
        "split",
        f"{REPO}:Q4_1",
        Lockfile.load(workdir / "model-lock.toml").entry("split").revision[:12],
        "5",
    ]


def test_lock_option_points_elsewhere(hub, tmp_path, workdir, run_cli):
    other = tmp_path / "elsewhere.toml"
    assert run_cli("--lock", str(other), "add", "chat", REPO)[0] == 0
    assert Lockfile.load(other).entry("chat").is_pinned
    assert not (workdir / "model-lock.toml").exists()


@pytest.mark.parametrize("argv", [["lock", "--bogus"], ["nocommand"], []])
def test_usage_errors_exit_2(argv, run_cli):
    assert run_cli(*argv)[0] == 2


def test_errors_are_one_line_without_traceback(hub, workdir):
    (workdir / "model-lock.toml").write_text("[models.chat\n")
    result = subprocess.run([sys.executable, "-m", "modelfix", "list"], capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "model-lock.toml:1:" in result.stderr


def test_token_never_reaches_lockfile_or_output(hub, workdir, tiny_files):
    hub.create_repo("org/private", private=True, token=SECRET)
    hub.commit("org/private", {"p-Q4_0.gguf": tiny_files["tiny-Q4_0.gguf"]})
    env = dict(os.environ, HF_TOKEN=SECRET)
    ok = subprocess.run(
        [sys.executable, "-m", "modelfix", "add", "p", "org/private"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    env["HF_TOKEN"] = "hf_WrongTokenValue999999"
    bad = subprocess.run(
        [sys.executable, "-m", "modelfix", "add", "q", "org/private"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 1
    everything = ok.stdout + ok.stderr + bad.stdout + bad.stderr + (workdir / "model-lock.toml").read_text()
    assert SECRET not in everything and "WrongToken" not in everything


def _modelfix(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    run_env.update(env)
    return subprocess.run([sys.executable, "-m", "modelfix", *args], capture_output=True, text=True, env=run_env)


def test_a_gated_repo_pins_from_its_public_metadata_and_syncs_only_with_an_accepted_token(hub, workdir, tiny_files):
    hub.create_repo("org/gated", gated=True, token=SECRET)
    hub.commit("org/gated", {"g-Q4_0.gguf": tiny_files["tiny-Q4_0.gguf"]})
    assert _modelfix("add", "g", "org/gated").returncode == 0  # the file list and sha256 are public

    anonymous, other = _modelfix("sync"), _modelfix("sync", HF_TOKEN="hf_SomeoneElsesToken1234")
    for result, status in ((anonymous, 401), (other, 403)):
        assert result.returncode == 1
        error = result.stderr.splitlines()[-1]
        assert f"access denied (HTTP {status}). The repository is gated: accept its terms on the Hub" in error
        assert "Access to model org/gated is restricted" in error  # what the Hub said, passed on
        assert "SomeoneElses" not in result.stderr
    assert _modelfix("sync", HF_TOKEN=SECRET).returncode == 0


def test_a_revoked_token_is_named_as_the_problem(hub, workdir, tiny_files):
    hub.create_repo("org/private", private=True, token=SECRET)
    hub.commit("org/private", {"p-Q4_0.gguf": tiny_files["tiny-Q4_0.gguf"]})
    assert _modelfix("add", "p", "org/private", HF_TOKEN=SECRET).returncode == 0
    hub.revoke_token(SECRET)

    added, synced = _modelfix("add", "q", "org/private", HF_TOKEN=SECRET), _modelfix("sync", HF_TOKEN=SECRET)

    assert added.returncode == synced.returncode == 1
    assert "your Hub token was refused (revoked or expired)" in added.stderr
    assert "The Hub refused your token (revoked or expired)" in synced.stderr
    assert SECRET not in added.stderr + synced.stderr + (workdir / "model-lock.toml").read_text()


@pytest.mark.parametrize("how", ["HF_TOKEN", "hf auth login"])
def test_a_private_repo_locks_and_syncs_with_the_users_token(hub, workdir, tiny_files, how):
    hub.create_repo("org/private", private=True, token=SECRET)
    hub.commit("org/private", {"p-Q4_0.gguf": tiny_files["tiny-Q4_0.gguf"]})
    env = dict(os.environ)
    if how == "HF_TOKEN":
        env["HF_TOKEN"] = SECRET
    else:  # where `hf auth login` saves it: $HF_HOME/token
        Path(env["HF_HOME"]).mkdir(parents=True, exist_ok=True)
        (Path(env["HF_HOME"]) / "token").write_text(SECRET)

    def modelfix(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelfix", *args], capture_output=True, text=True, env=env)

    added, synced = modelfix("add", "p", "org/private"), modelfix("sync")
    assert added.returncode == 0, added.stderr
    assert synced.returncode == 0, synced.stderr
    model = Path(synced.stdout.split()[-1])
    assert model.name == "p-Q4_0.gguf" and model.read_bytes() == tiny_files["tiny-Q4_0.gguf"].read_bytes()
    cdn = [r for r in hub.requests if r.origin == "cdn"]
    assert cdn and all(r.status in (200, 206) for r in cdn)
    written = [(workdir / "model-lock.toml").read_bytes()]
    written += [
        p.read_bytes() for p in Path(env["MODELFIX_CACHE_DIR"]).rglob("*") if p.is_file() and p.stat().st_size < 100_000
    ]
    assert not any(SECRET.encode() in data for data in written)
    assert SECRET not in added.stdout + added.stderr + synced.stdout + synced.stderr


def test_the_saved_token_is_not_used_when_implicit_tokens_are_off(hub, workdir, tiny_files):
    hub.create_repo("org/private", private=True, token=SECRET)
    hub.commit("org/private", {"p-Q4_0.gguf": tiny_files["tiny-Q4_0.gguf"]})
    home = Path(os.environ["HF_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "token").write_text(SECRET)
    env = dict(os.environ, HF_HUB_DISABLE_IMPLICIT_TOKEN="1")
    result = subprocess.run(
        [sys.executable, "-m", "modelfix", "add", "p", "org/private"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert "log in with `hf auth login` or set HF_TOKEN" in result.stderr and SECRET not in result.stderr


@pytest.mark.parametrize(
    ("flag", "env", "named"),
    [
        (["--offline"], {}, "--offline"),
        ([], {"MODELFIX_OFFLINE": "1"}, "MODELFIX_OFFLINE=1"),
        ([], {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE=1"),
    ],
    ids=["flag", "MODELFIX_OFFLINE", "HF_HUB_OFFLINE"],
)
def test_offline_pinning_refuses_hub_sources_without_a_request(hub, workdir, run_cli, monkeypatch, flag, env, named):
    run_cli("add", "chat", REPO)
    lock = workdir / "model-lock.toml"
    before = lock.read_bytes()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    hub.clear_log()

    for argv in (["add", "other", f"{REPO}:Q8_0", *flag], ["lock", "--upgrade", *flag]):
        code, _, err = run_cli(*argv)
        assert code == 1
        assert f"pinning '{REPO}" in err and f"offline mode is on ({named})" in err and "lock --check" in err
    assert lock.read_bytes() == before and hub.count() == 0
    code, out, _ = run_cli("lock", *flag)  # nothing to pin: offline is fine
    assert code == 0 and "up to date" in out


def test_a_local_file_pins_offline(workdir, run_cli, tiny_files):
    code, _out, err = run_cli("--offline", "add", "local", str(tiny_files["tiny-Q8_0.gguf"]))
    assert code == 0, err
    assert Lockfile.load(workdir / "model-lock.toml").entry("local").is_pinned


def test_common_options_work_after_the_command_too(hub, tmp_path, workdir, run_cli):
    other = tmp_path / "elsewhere.toml"
    assert run_cli("add", "chat", REPO, "--lock", str(other))[0] == 0
    code, out, _ = run_cli("list", "--lock", str(other), "--offline")
    assert code == 0 and out.splitlines()[1].startswith("chat")


def test_lock_in_a_missing_folder_is_a_clear_error(hub, tmp_path, workdir, run_cli):
    code, _, err = run_cli("add", "chat", REPO, "--lock", str(tmp_path / "no" / "model-lock.toml"))
    assert code == 1 and "does not exist. Create it" in err


def test_concurrent_adds_and_lock_keep_every_pin(hub, workdir, run_cli, tiny_files):
    run_cli("add", "base", f"{REPO}:Q4_0")
    new_commit = hub.commit(REPO, {"notes.txt": b"unrelated change"}, message="docs")
    tags = ("Q4_0", "Q8_0", "Q4_1")
    commands = [["add", f"m{i}", f"{REPO}:{tags[i % 3]}"] for i in range(6)] + [
        ["lock", "--upgrade", "--model", "base"]
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "modelfix", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv in commands
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [(proc.returncode, err) for proc, err in zip(procs, errors, strict=True)] == [(0, "")] * len(commands)
    lock = Lockfile.load(workdir / "model-lock.toml")
    assert sorted(lock.entries) == ["base"] + [f"m{i}" for i in range(6)]
    assert all(entry.is_pinned for entry in lock.entries.values())
    assert lock.entry("base").revision == new_commit, "the concurrent upgrade's pin survived too"
    assert run_cli("lock", "--check")[0] == 0
    assert sorted(p.name for p in workdir.iterdir()) == ["model-lock.toml"], "the writers' lock lives elsewhere"


def test_check_of_an_unknown_model_fails_like_lock(hub, workdir, run_cli):
    run_cli("add", "chat", REPO)
    for argv in (["lock", "--model", "nosuch"], ["lock", "--check", "--model", "nosuch"]):
        code, out, err = run_cli(*argv)
        assert (code, out) == (1, "") and "no model named 'nosuch'" in err and "(models: chat)" in err


def test_pins_without_a_model_file_need_relocking(hub, workdir, run_cli):
    run_cli("add", "chat", REPO)
    lock = workdir / "model-lock.toml"
    pinned = Lockfile.load(lock).entry("chat")
    lock.write_text(lock.read_text().replace('role = "model"', 'role = "preset"'))
    code, _, err = run_cli("lock", "--check")
    assert code == 1
    assert 'chat: no file in `files` has role = "model". Re-pin it with `modelfix lock --upgrade --model chat`' in err
    code, out, _ = run_cli("lock")
    assert code == 0 and "Updated chat" in out
    assert Lockfile.load(lock).entry("chat") == pinned
    assert run_cli("lock", "--check")[0] == 0


def test_hub_pins_without_a_revision_need_relocking(hub, workdir, run_cli):
    run_cli("add", "chat", REPO)
    lock = workdir / "model-lock.toml"
    pinned = Lockfile.load(lock).entry("chat")
    lock.write_text(lock.read_text().replace(f'revision = "{pinned.revision}"\n', "", 1))
    assert Lockfile.load(lock).entry("chat").revision is None
    code, _, err = run_cli("lock", "--check")
    assert code == 1 and "chat: pins files but no revision" in err
    assert "`modelfix lock --upgrade --model chat`" in err
    code, out, _ = run_cli("lock")
    assert code == 0 and "Updated chat" in out
    assert Lockfile.load(lock).entry("chat") == pinned
    assert run_cli("lock", "--check")[0] == 0


@pytest.mark.parametrize(
    ("broken", "repair"),
    [
        (('revision = "', 'revision = "main"  # was "'), ["lock", "--upgrade", "--model", "chat"]),
        (('sha256 = "', 'sha256 = "0'), ["lock", "--upgrade"]),
        (("size = ", "size = -"), ["add", "chat", REPO]),
        (('revision = "', 'revision = "main"  # was "'), ["remove", "chat"]),
    ],
    ids=["revision-upgrade-model", "sha256-upgrade", "size-add", "revision-remove"],
)
def test_the_command_a_broken_pin_error_names_repairs_it(hub, workdir, run_cli, broken, repair):
    run_cli("add", "chat", REPO)
    run_cli("add", "split", f"{REPO}:Q4_1")
    lock = workdir / "model-lock.toml"
    pinned = Lockfile.load(lock)
    text = lock.read_text()
    chat = text.index("[models.chat]")
    lock.write_text(text[:chat] + text[chat:].replace(*broken, 1))
    code, _, err = run_cli("list")
    assert code == 1 and err.startswith(f"error: {lock}:") and "Run `modelfix lock --upgrade --model chat`" in err

    code, _, err = run_cli(*repair)

    assert code == 0, err
    repaired = Lockfile.load(lock)  # the whole file reads again
    assert repaired.entries.get("chat") == (None if repair[0] == "remove" else pinned.entry("chat"))
    assert repaired.entry("split") == pinned.entry("split")


def test_unreadable_lockfiles_are_one_line_errors(hub, workdir, run_cli):
    code, _, err = run_cli("--lock", str(workdir), "add", "chat", REPO)
    assert (
        code == 1
        and err == f"error: {workdir} is a folder, not a lockfile. Pass the file: --lock {workdir}/model-lock.toml.\n"
    )
    lock = workdir / "model-lock.toml"
    lock.write_bytes(b"version = 1\n[models.caf\xe9]\n")
    for argv in (["add", "chat", REPO], ["lock"], ["lock", "--check"], ["list"]):
        code, _, err = run_cli(*argv)
        assert code == 1 and err.startswith(
            f"error: {lock}:2: the lockfile is not UTF-8 text (byte 0xe9). Save it as UTF-8"
        )
    assert lock.read_bytes() == b"version = 1\n[models.caf\xe9]\n"
    assert hub.count() == 0, "a broken lockfile fails before any network call"


def test_windows_line_endings_a_bom_and_a_symlink_survive_add_and_lock(hub, tmp_path, workdir, run_cli):
    shared = tmp_path / "shared" / "model-lock.toml"
    shared.parent.mkdir()
    assert run_cli("--lock", str(shared), "add", "chat", REPO)[0] == 0
    shared.write_bytes(b"\xef\xbb\xbf" + shared.read_bytes().replace(b"\n", b"\r\n"))
    (workdir / "model-lock.toml").symlink_to(shared)

    assert run_cli("add", "split", f"{REPO}:Q4_1")[0] == 0
    assert run_cli("lock", "--upgrade")[0] == 0
    assert (workdir / "model-lock.toml").is_symlink()
    data = shared.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf# Models pinned by modelfix")
    assert data.count(b"\n") == data.count(b"\r\n")
    assert sorted(Lockfile.load(shared).entries) == ["chat", "split"]


@pytest.mark.parametrize("name", ["_chat", "-chat", "chat/x"])
def test_a_bad_model_name_states_the_rule(hub, workdir, run_cli, name):
    code, _, err = run_cli("add", "--", name, REPO)
    assert code == 1
    assert err == (
        f"error: model name {name!r} must start with a letter or digit, followed by letters, digits, "
        "'_', '.' or '-' (e.g. chat or qwen-small).\n"
    )
    assert hub.count() == 0 and not (workdir / "model-lock.toml").exists()


def test_version_is_the_installed_one(run_cli):
    from importlib.metadata import version

    code, out, err = run_cli("--version")
    assert (code, out, err) == (0, f"modelfix {version('modelfix')}\n", "")


def test_every_command_option_and_argument_has_help(undocumented):
    from modelfix.cli import build_parser

    assert undocumented(build_parser()) == []


def test_each_command_parses_with_only_its_own_group_as_with_all_of_them():
    """`modelfix sync` builds only the cache group's parser (start-up): the map must name every command."""
    import argparse

    from modelfix.cli import _COMMANDS, build_parser

    full = build_parser()
    (commands,) = [a for a in full._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == set(_COMMANDS)
    needs = {"add": ["chat", REPO], "remove": ["chat"], "cache": ["stats"], "inspect": ["chat"], "run": ["chat", "Hi"]}
    for name in commands.choices:
        argv = ["--cache-dir", "/c", name, *needs.get(name, [])]
        assert vars(build_parser(name).parse_args(argv)) == vars(full.parse_args(argv)), name


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["sync"], "sync"),
        (["--lock", "sync", "list"], "list"),  # a lockfile named "sync"
        (["--lock=x.toml", "--offline", "verify", "--full"], "verify"),
        (["--cache", "/c", "--readonly-cache", "/r", "doctor"], "doctor"),  # --cache abbreviates --cache-dir
        (["--offline", "-h"], None),
        (["--version"], None),
        ([], None),
    ],
)
def test_the_command_is_found_after_the_common_options(argv, command):
    from modelfix.cli import command_of

    assert command_of(argv) == command


@pytest.mark.parametrize("argv", [["--help"], ["nosuch"]])
def test_help_and_unknown_commands_list_every_command(run_cli, argv):
    code, out, err = run_cli(*argv)
    listing = out if code == 0 else err
    assert all(name in listing for name in ("add", "sync", "cache", "inspect", "doctor", "run")), listing


def test_add_prints_the_lockfile_it_wrote_as_an_absolute_path(hub, workdir, run_cli, monkeypatch):
    (workdir / "sub").mkdir()
    code, out, _ = run_cli("--lock", "model-lock.toml", "add", "chat", REPO)
    assert code == 0 and f" to {workdir / 'model-lock.toml'}: " in out
    monkeypatch.chdir(workdir / "sub")  # found upward, from a subfolder
    code, out, _ = run_cli("add", "other", f"{REPO}:Q8_0")
    assert code == 0 and f" to {workdir / 'model-lock.toml'}: " in out


def test_adding_an_existing_name_says_it_replaces_it_and_what_changed(hub, lock, run_cli):
    chat = Lockfile.load(lock).entry("chat")
    split = Lockfile.load(lock).entry("split")

    code, out, _ = run_cli("add", "chat", chat.source, "--n-ctx", "256")  # same source, a new setting
    assert code == 0, out
    assert out.splitlines() == [f"Replaced chat in {lock}: n_ctx (unset) -> 256; pins unchanged"]

    code, out, _ = run_cli("add", "chat", split.source)
    assert code == 0
    assert out.startswith(f"Replaced chat in {lock}: source {chat.source!r} -> {split.source!r}; pins ")
    assert split.files[0].path in out.split(" -> ")[-1] and "n_ctx" not in out  # kept, so not a change

    before = lock.read_bytes()
    code, out, _ = run_cli("add", "chat", split.source)
    assert (code, out) == (0, f"chat in {lock} already is {split.source!r} with these settings: nothing changed\n")
    assert lock.read_bytes() == before


def test_list_json_gives_every_model_for_scripts(hub, lock, run_cli):
    import json

    assert run_cli("sync", "chat")[0] == 0
    code, out, _ = run_cli("list", "--json")
    assert code == 0
    rows = json.loads(out)
    entries = Lockfile.load(lock).entries
    assert [row["name"] for row in rows] == list(entries)
    chat = rows[0]
    assert chat == {
        "name": "chat",
        "source": entries["chat"].source,
        "revision": entries["chat"].revision,
        "pinned": True,
        "files": len(entries["chat"].files),
        "size": entries["chat"].size,
        "cache": "cached",
    }
    assert rows[1]["cache"] == "partial"  # it shares files with chat


_COMMENTED = """\
# Models pinned by modelfix. Edit `source`; `modelfix lock` writes the pins.
version = 1

# the chat model, for the CLI tests
[models.chat]
source = "{chat}"   # a comment on the source
n_ctx = 256

# three parts: the split loader's test
[models.split]
source = "{split}"
"""


@pytest.mark.parametrize("style", ["lf", "crlf+bom"])
@pytest.mark.parametrize("name", ["chat", "split"])
def test_remove_deletes_the_entry_and_keeps_the_rest_of_the_file(hub, lock, run_cli, name, style):
    sources = {n: Lockfile.load(lock).entry(n).source for n in ("chat", "split")}
    text = _COMMENTED.format(**sources)
    encode = (lambda s: s.encode()) if style == "lf" else (lambda s: b"\xef\xbb\xbf" + s.replace("\n", "\r\n").encode())
    lock.write_bytes(encode(text))
    assert run_cli("lock")[0] == 0  # pins both, as `add` would
    pinned = lock.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    other = "split" if name == "chat" else "chat"
    kept = Lockfile.load(lock).entry(other)

    code, out, err = run_cli("remove", name)

    assert code == 0, err
    assert out.splitlines()[0] == f"Removed {name} ({sources[name]}) from {lock}"
    assert "modelfix cache gc" in out + err
    tables = pinned.split("\n\n")  # the header, then each table with the comment above it
    expected = "\n\n".join(t for t in tables if f"[models.{name}]" not in t).rstrip("\n") + "\n"
    assert lock.read_bytes() == encode(expected)
    assert Lockfile.load(lock).entries == {other: kept}
    assert run_cli("lock", "--check")[0] == 0


def test_removing_an_unknown_or_routed_name_is_an_error_that_leaves_the_file_alone(hub, lock, run_cli):
    before = lock.read_bytes()
    code, out, err = run_cli("remove", "nosuch")
    assert (code, out) == (1, "")
    assert err == f"error: no model named 'nosuch' in {lock} (models: chat, split): nothing removed.\n"
    assert lock.read_bytes() == before

    lock.write_bytes(before + b'\n[routing]\ndefault = "chat"\nrules = [{ pattern = "x", model = "split" }]\n')
    routed = lock.read_bytes()
    for name, how in (("split", "routing.rules[0]"), ("chat", "routing.default")):
        code, out, err = run_cli("remove", name)
        assert (code, out) == (1, "") and len(err.splitlines()) == 1
        assert f"{name!r} is named by {how}" in err and "nothing removed" in err
        assert lock.read_bytes() == routed


def test_concurrent_removes_and_adds_keep_every_other_entry(hub, lock, run_cli, workdir):
    source = Lockfile.load(lock).entry("chat").source
    commands = [["add", f"m{i}", source] for i in range(4)]
    commands += [["remove", "chat"], ["remove", "split"]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "modelfix", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv in commands
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(commands), errors
    assert sorted(Lockfile.load(lock).entries) == [f"m{i}" for i in range(4)]
    assert run_cli("lock", "--check")[0] == 0


# --- bad input that once ended in a traceback: one line on stderr, nothing written -----------------


def test_a_model_name_ending_in_a_newline_is_refused(hub, workdir, run_cli):
    code, out, err = run_cli("add", "chat\n", f"{REPO}:Q4_0")

    assert code == 1 and out == "" and err.startswith("error: model name 'chat\\n' must start with a letter")
    assert len(err.splitlines()) == 1 and not (workdir / "model-lock.toml").exists()


@pytest.mark.parametrize("source", ["a" * 300, "./" + "a" * 300 + ".gguf", "a" * 300 + "/x.gguf", "x/" + "a" * 5000])
def test_a_source_of_an_impossibly_long_path_is_one_line(workdir, run_cli, source):
    code, out, err = run_cli("add", "m", source)

    assert code == 1 and out == "" and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (workdir / "model-lock.toml").exists()


def test_add_refuses_an_absurd_setting_before_asking_the_hub(hub, workdir, run_cli):
    hub.clear_log()

    code, _, err = run_cli("add", "chat", f"{REPO}:Q4_0", "--n-ctx", "99999999999999999999")

    assert code == 1 and "n_ctx" in err and "16777216" in err and len(err.splitlines()) == 1
    assert hub.count() == 0 and not (workdir / "model-lock.toml").exists()


BAD_PINS = {
    "long-path": ("x/" * 2100) + "m.gguf",
    "nul": "m\\u0000.gguf",
}
BAD_JOINS = {"join-list": '["x"]', "join-table": "{a = 1}", "join-number": "5"}


def _write_bad(lock: Path, case: str) -> None:
    entry = Lockfile.load(lock).entry("chat")
    pin = entry.files[0]
    path = BAD_PINS.get(case, pin.path)
    join = f", join = {BAD_JOINS[case]}" if case in BAD_JOINS else ""
    text = lock.read_text()
    start = text.index("[models.chat]")
    end = text.index("[models.", start + 1)
    bad = (
        f'[models.chat]\nsource = "{entry.source}"\npinned_from = "{entry.source}"\nfiles = [\n'
        f'    {{path = "{path}", size = {pin.size}, sha256 = "{pin.sha256}", role = "model"{join}}},\n]\n\n'
    )
    lock.write_text(text[:start] + bad + text[end:])


@pytest.mark.parametrize("case", [*BAD_PINS, *BAD_JOINS])
@pytest.mark.parametrize("command", [("lock", "--check"), ("sync", "chat"), ("verify", "chat"), ("list",)])
def test_a_hand_edited_pin_is_one_line_for_every_command(lock, run_cli, case, command):
    _write_bad(lock, case)

    code, out, err = run_cli(*command)

    assert code == 1 and out == "", out
    assert err.startswith(f"error: {lock}:") and "files[0] of [models.chat]" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", [("lock", "--check"), ("sync",), ("list",), ("verify",), ("cache", "stats")])
def test_a_device_as_the_lockfile_is_one_line(run_cli, workdir, command):
    code, out, err = run_cli(*command, "--lock", "/dev/zero")

    assert code == 1 and out == ""
    assert err == "error: /dev/zero is not a regular file: pass the lockfile itself with --lock PATH.\n"
