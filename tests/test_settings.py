"""Load settings and pool settings: precedence layer by layer, checking, the plugin hook."""

from __future__ import annotations

import math

import pytest

from modelfix.errors import LockError, SettingsError
from modelfix.hooks import hookimpl, plugin_manager
from modelfix.settings import (
    STRATEGIES,
    LoadSettings,
    env_var,
    parse_duration,
    resolve_pool_settings,
    resolve_settings,
    setting_names,
)


@pytest.fixture(autouse=True)
def _no_setting_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in setting_names():
        monkeypatch.delenv(env_var(name), raising=False)
    for var in ("MODELFIX_N_GPU_LAYERS", "MODELFIX_N_THREADS", "MODELFIX_N_THREADS_BATCH", "MODELFIX_MAX_LOADED"):
        monkeypatch.delenv(var, raising=False)


LAYER_CASES = [
    # (call, frontend, env, lockfile, front-end default) -> expected n_ctx and its origin; None = not set there
    ((1024, 2048, 3072, 4096, 5120), 1024, "call"),
    ((None, 2048, 3072, 4096, 5120), 2048, "frontend"),
    ((None, None, 3072, 4096, 5120), 3072, "env:MODELFIX_N_CTX"),
    ((None, None, None, 4096, 5120), 4096, "lockfile"),
    ((None, None, None, None, 5120), 5120, "frontend default"),
    ((None, None, None, None, None), 512, "default"),
    ((1024, None, None, 4096, None), 1024, "call"),
    ((None, 2048, None, 4096, None), 2048, "frontend"),
]


@pytest.mark.parametrize(("layers", "expected", "origin"), LAYER_CASES)
def test_each_layer_wins_over_those_below(monkeypatch, layers, expected, origin):
    call, frontend, env, lock, default = layers
    if env is not None:
        monkeypatch.setenv("MODELFIX_N_CTX", str(env))
    resolved = resolve_settings(
        "chat",
        {"n_ctx": call},
        frontend={"n_ctx": frontend},
        entry={"n_ctx": lock} if lock is not None else {},
        defaults={"n_ctx": default} if default is not None else {},
    )
    assert resolved.settings.n_ctx == expected
    assert resolved.origins["n_ctx"] == origin


def test_layers_mix_per_setting(monkeypatch):
    monkeypatch.setenv("MODELFIX_THREADS", "3")
    resolved = resolve_settings("chat", {"seed": 7}, frontend={"n_batch": 64}, entry={"n_ctx": 256, "seed": 1})
    rows = {name: (value, origin) for name, value, origin in resolved.rows()}
    assert rows["seed"] == (7, "call")
    assert rows["n_batch"] == (64, "frontend")
    assert rows["n_threads"] == (3, "env:MODELFIX_THREADS")
    assert rows["n_ctx"] == (256, "lockfile")
    assert rows["verbose"] == (False, "default")
    assert [r[0] for r in resolved.rows()] == list(setting_names())


def test_environment_is_read_at_every_resolve(monkeypatch):
    assert resolve_settings("chat").settings.n_batch == 512
    monkeypatch.setenv("MODELFIX_N_BATCH", "128")
    assert resolve_settings("chat").settings.n_batch == 128


@pytest.mark.parametrize("var", ["MODELFIX_GPU_LAYERS", "MODELFIX_N_GPU_LAYERS"])
def test_gpu_layers_from_the_environment(monkeypatch, var):
    monkeypatch.setenv(var, "7")
    resolved = resolve_settings("chat")
    assert resolved.settings.n_gpu_layers == 7
    assert resolved.origins["n_gpu_layers"] == f"env:{var}"


@pytest.mark.parametrize(("supports", "expected"), [(True, "auto"), (False, 0)])
def test_gpu_layers_default_follows_the_build(monkeypatch, supports, expected):
    import llama_cpp

    # Stands in for a GPU: no GPU on this machine, so faking the build's answer tests only the
    # default's decision ("auto": as many layers as the GPU budget holds, where offload is possible; else none).
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: supports)
    assert resolve_settings("chat").settings.n_gpu_layers == expected


def test_gpu_layers_default_on_this_cpu_build():
    import llama_cpp

    expected = "auto" if llama_cpp.llama_supports_gpu_offload() else 0
    assert resolve_settings("chat").settings.n_gpu_layers == expected


@pytest.mark.parametrize(
    ("var", "raw", "name", "value"),
    [
        ("MODELFIX_FLASH_ATTN", "yes", "flash_attn", True),
        ("MODELFIX_USE_MMAP", "0", "use_mmap", False),
        ("MODELFIX_TENSOR_SPLIT", "3,1", "tensor_split", (3.0, 1.0)),
        ("MODELFIX_MAIN_GPU", "1", "main_gpu", 1),
        ("MODELFIX_THREADS", "auto", "n_threads", None),
        ("MODELFIX_CHAT_FORMAT", "chatml", "chat_format", "chatml"),
        ("MODELFIX_ROPE_FREQ_BASE", "10000", "rope_freq_base", 10000.0),
    ],
)
def test_environment_values_are_parsed_by_type(monkeypatch, var, raw, name, value):
    monkeypatch.setenv(var, raw)
    assert getattr(resolve_settings("chat").settings, name) == value


def test_unknown_setting_lists_the_valid_ones():
    with pytest.raises(SettingsError) as info:
        resolve_settings("chat", {"n_ctxx": 4096})
    message = str(info.value)
    assert "'n_ctxx'" in message and "load('chat')" in message
    for name in ("n_ctx", "n_gpu_layers", "flash_attn", "embedding", "verbose"):
        assert name in message


@pytest.mark.parametrize(
    ("call", "env", "fragment"),
    [
        ({"n_ctx": "big"}, {}, "n_ctx = 'big'"),
        ({"n_ctx": -5}, {}, "an integer >= 0"),
        ({"flash_attn": 1}, {}, "true or false"),
        ({"tensor_split": "a,b"}, {}, "a list of numbers"),
        ({}, {"MODELFIX_GPU_LAYERS": "all"}, "environment variable MODELFIX_GPU_LAYERS"),
        ({}, {"MODELFIX_VERBOSE": "maybe"}, "environment variable MODELFIX_VERBOSE"),
    ],
)
def test_invalid_values_name_the_setting_and_the_layer(monkeypatch, call, env, fragment):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match="invalid") as info:
        resolve_settings("chat", call)
    assert fragment in str(info.value)


def test_a_bad_lockfile_value_names_the_entry():
    with pytest.raises(SettingsError, match=r"\[models.chat\] in the lockfile"):
        resolve_settings("chat", entry={"n_ctx": "lots"})


def test_settings_are_frozen_and_hashable():
    settings = resolve_settings("chat", {"tensor_split": [1, 1]}).settings
    assert settings.tensor_split == (1.0, 1.0)
    assert hash(settings) == hash(resolve_settings("chat", {"tensor_split": (1.0, 1.0)}).settings)
    with pytest.raises(AttributeError):
        settings.n_ctx = 1  # type: ignore[misc]  # frozen: assigning is what this checks
    assert "mmproj" not in settings.llama_kwargs()
    assert settings.llama_kwargs()["tensor_split"] == [1.0, 1.0]


class _Plugin:
    @hookimpl
    def modelfix_adjust_settings(self, name, settings):
        if name == "chat":
            settings["n_ctx"] = settings["n_ctx"] * 2


class _BadPlugin:
    @hookimpl
    def modelfix_adjust_settings(self, name, settings):
        settings["gpu"] = True


@pytest.mark.parametrize("plugin", [_Plugin, _BadPlugin])
def test_plugins_adjust_settings_last(plugin):
    pm = plugin_manager()
    instance = plugin()
    pm.register(instance)
    try:
        if plugin is _BadPlugin:
            with pytest.raises(SettingsError, match=r"unknown setting 'gpu'.*plugin"):
                resolve_settings("chat")
            return
        resolved = resolve_settings("chat", {"n_ctx": 300})
        assert resolved.settings.n_ctx == 600
        assert resolved.origins["n_ctx"] == "plugin"
        assert resolve_settings("other", {"n_ctx": 300}).settings.n_ctx == 300
    finally:
        pm.unregister(instance)


# --- pool settings ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_presets(monkeypatch, strategy):
    monkeypatch.setenv("MODELFIX_POOL_STRATEGY", strategy)
    settings = resolve_pool_settings()
    assert settings.strategy == strategy
    assert settings.keep_alive == STRATEGIES[strategy]["keep_alive"]
    assert settings.max_count == STRATEGIES[strategy]["max_count"]


def test_strategy_shapes():
    ram, ssd, none = (resolve_pool_settings({"strategy": s}) for s in ("ram", "ssd", "none"))
    assert ram.keep_alive > ssd.keep_alive > none.keep_alive == 0
    assert ssd.max_count == 1 and ram.max_count is None


def test_explicit_keep_alive_and_count_override_the_preset(monkeypatch):
    monkeypatch.setenv("MODELFIX_POOL_STRATEGY", "ssd")
    monkeypatch.setenv("MODELFIX_KEEP_ALIVE", "10m")
    settings = resolve_pool_settings({"max_count": 3})
    assert (settings.strategy, settings.keep_alive, settings.max_count) == ("ssd", 600.0, 3)


def test_pool_arguments_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("MODELFIX_MEMORY_BUDGET", "1GB")
    assert resolve_pool_settings().memory_budget == 1e9
    assert resolve_pool_settings({"memory_budget": "2GiB"}).memory_budget == 2 * 2**30
    assert resolve_pool_settings({"memory_budget": "inf"}).memory_budget == math.inf
    monkeypatch.setenv("MODELFIX_MEMORY_BUDGET", "auto")
    assert resolve_pool_settings().memory_budget is None


@pytest.mark.parametrize(
    ("explicit", "fragment"),
    [
        ({"strategy": "disk"}, "unknown pool strategy"),
        ({"memory_budget": "lots"}, "memory budget"),
        ({"keep_alive": "soon"}, "bad duration"),
        ({"max_count": 0}, "bad max count"),
        ({"budget": "1GB"}, "unknown pool setting 'budget'"),
    ],
)
def test_bad_pool_settings(explicit, fragment):
    with pytest.raises(SettingsError, match=fragment):
        resolve_pool_settings(explicit)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
        (0, 0.0),
        ("2.5", 2.5),
        ("-1", math.inf),
        (-1, math.inf),
        ("inf", math.inf),
        ("500ms", 0.5),
        ("1d", 86400.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_defaults_match_llama_cpp_where_modelfix_does_not_decide():
    import inspect

    import llama_cpp

    params = inspect.signature(llama_cpp.Llama.__init__).parameters
    defaults = LoadSettings().llama_kwargs()  # split_mode: a name here, llama.cpp's number there
    for name in setting_names():
        if name in params and name not in ("n_gpu_layers", "verbose", "seed", "n_threads", "n_threads_batch"):
            assert defaults[name] == params[name].default, name


REPACK_CASES = [
    # (call, frontend, MODELFIX_REPACK, lockfile) -> repack and its origin
    (("off", "on", "on", "on"), "off", "call"),
    ((None, "off", "on", "on"), "off", "frontend"),
    ((None, None, "OFF", "on"), "off", "env:MODELFIX_REPACK"),
    ((None, None, None, "off"), "off", "lockfile"),
    ((None, None, None, None), "auto", "default"),
    ((False, None, None, None), "off", "call"),
]


@pytest.mark.parametrize(("layers", "expected", "origin"), REPACK_CASES)
def test_repack_follows_the_usual_precedence(monkeypatch, layers, expected, origin):
    call, frontend, env, lock = layers
    if env is not None:
        monkeypatch.setenv("MODELFIX_REPACK", env)
    resolved = resolve_settings(
        "chat", {"repack": call}, frontend={"repack": frontend}, entry={"repack": lock} if lock else {}
    )
    assert (resolved.settings.repack, resolved.origins["repack"]) == (expected, origin)
    assert "repack" not in resolved.settings.llama_kwargs()  # a field of llama.cpp's params, not a Llama() keyword


def test_repack_in_the_lockfile(tmp_path):
    from modelfix.lockfile import Lockfile

    path = tmp_path / "model-lock.toml"
    path.write_text('version = 1\n\n[models.chat]\nsource = "./m.gguf"\nrepack = "off"\n', encoding="utf-8")
    assert Lockfile.load(path).entry("chat").settings == {"repack": "off"}
    path.write_text('version = 1\n\n[models.chat]\nsource = "./m.gguf"\nrepack = 0\n', encoding="utf-8")
    with pytest.raises(LockError, match="repack"):
        Lockfile.load(path)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("n_ctx", 2**24 + 1, r"an integer >= 0 and <= 16777216"),
        ("n_ctx", 99999999999999999999, r"an integer >= 0 and <= 16777216"),
        ("n_batch", 2**40, r"an integer >= 1 and <= 16777216"),
        ("seed", 2**40, r"an integer >= -1 and <= 4294967295"),
        ("rope_freq_base", math.nan, r"a finite number"),
        ("rope_freq_scale", math.inf, r"a finite number"),
        ("tensor_split", (1.0, math.nan), r"a list of numbers, each finite"),
    ],
)
def test_absurd_values_are_refused_at_every_layer(monkeypatch, name, value, expected):
    with pytest.raises(
        SettingsError, match=rf"setting {name} = .* \(argument of load\('chat'\)\) is invalid: expected {expected}"
    ):
        resolve_settings("chat", {name: value})
    monkeypatch.setenv(env_var(name), ",".join(map(str, value)) if isinstance(value, tuple) else str(value))
    with pytest.raises(
        SettingsError, match=rf"\(environment variable {env_var(name)}\) is invalid: expected {expected}"
    ):
        resolve_settings("chat", {})
