"""The pool on a GPU: VRAM estimates per layer, the GPU budget, n_gpu_layers="auto", GPU settings.

This machine has no GPU. Every test here except the last one *stands in for a GPU*: it injects
the device query (``llama_supports_gpu_offload`` and the pool's ``gpu_devices``) and then loads
real tiny models with real llama-cpp-python, whose CPU build records the requested
``n_gpu_layers`` in its model params and runs on the CPU. What is checked is modelfix's own
arithmetic and choices; that llama.cpp then really puts the layers on the GPU, and that unloading
returns the memory, is ``test_unload_returns_vram_on_a_real_gpu`` (marked ``gpu``: it runs on a
GPU machine, ``benchmarks/gpu_check.sh pytest``, and skips elsewhere).
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

import llama_cpp
import pytest

import modelfix.pool as pool_module
from modelfix.errors import MemoryBudgetError, SettingsError
from modelfix.estimate import CUDA_OVERHEAD, GpuDevice, estimate
from modelfix.events import events
from modelfix.placement import device_costs
from modelfix.pool import Pool
from modelfix.settings import resolve_pool_settings
from modelfix.testing.gguf import write_tiny_model

GIB = 1 << 30
N_LAYER = 4


@pytest.fixture(autouse=True)
def _no_pool_env(monkeypatch):
    for var in ("MODELFIX_MAX_LOADED", "MODELFIX_GPU_LAYERS", "MODELFIX_GPU_MEMORY_BUDGET", "MODELFIX_MEMORY_BUDGET"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gpu-models")
    return {name: write_tiny_model(folder / f"{name}.gguf", seed=i, n_layer=N_LAYER)[0] for i, name in enumerate("ab")}


@pytest.fixture
def gpus(monkeypatch):
    """Stands in for a GPU: the build "offloads" and ggml "sees" the devices the test sets."""
    seen: list[GpuDevice] = [GpuDevice(0, "CUDA0", 80 * GIB, 80 * GIB)]
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    monkeypatch.setattr(pool_module, "offload_supported", lambda: True)
    monkeypatch.setattr(pool_module, "gpu_devices", lambda: list(seen))
    return seen


def gpu_cost(path: Path, layers: int) -> int:
    """VRAM of one handle on the (stand-in) GPU with ``layers`` offloaded, as the pool counts it."""
    return estimate(path, n_ctx=512, n_gpu_layers=layers, offload=True).gpu


def budget_for(*costs: int) -> int:
    return CUDA_OVERHEAD + sum(costs)


def test_auto_offloads_every_layer_when_they_fit(gpus, models):
    pool = Pool(memory_budget="inf", gpu_memory_budget="inf")
    llm = pool.acquire(models["a"], "sha-a", "a")  # n_gpu_layers: the default, "auto", on a GPU build
    assert pool.record(llm).settings.n_gpu_layers == "auto"
    assert llm("Hi", max_tokens=2)["choices"]
    assert pool.record(llm).gpu_layers == N_LAYER + 1  # the blocks and the output layer
    assert llm.model_params.n_gpu_layers == N_LAYER + 1  # what llama.cpp was asked for
    pool.close()


def test_auto_takes_as_many_layers_as_the_budget_holds(gpus, models):
    fits = 2
    budget = budget_for(gpu_cost(models["a"], fits)) + 1000  # not enough for a third layer
    assert budget < budget_for(gpu_cost(models["a"], fits + 1))
    pool = Pool(memory_budget="inf", gpu_memory_budget=budget)
    llm = pool.acquire(models["a"], "sha-a", "a", n_gpu_layers="auto")
    assert llm.model_params.n_gpu_layers == fits
    assert pool.record(llm).gpu_layers == fits
    pool.close()


def test_auto_evicts_idle_handles_before_settling_for_part_of_the_model(gpus, models):
    full = gpu_cost(models["a"], -1)
    pool = Pool(memory_budget="inf", gpu_memory_budget=budget_for(full) + 1000, keep_alive=-1)
    seen: list = []
    with events.listening(seen.append):
        a = pool.acquire(models["a"], "sha-a", "a")
        assert a.tokenize(b"x") and pool.record(a).gpu_layers == N_LAYER + 1
        b = pool.acquire(models["b"], "sha-b", "b")
        assert b.tokenize(b"x")
    assert pool.record(b).gpu_layers == N_LAYER + 1  # Ollama's order: room for all of it first
    assert not pool.record(a).resident
    assert ("evict", "a") in [(e.kind, e.model) for e in seen]
    pool.close()


def test_auto_fits_part_of_the_model_beside_a_handle_in_use(gpus, models):
    full = gpu_cost(models["a"], -1)
    pool = Pool(memory_budget="inf", gpu_memory_budget=budget_for(full, gpu_cost(models["b"], 1)) + 1000)
    a = pool.acquire(models["a"], "sha-a", "a", n_gpu_layers=-1)
    with pool.use(a):  # held: never evicted, so b gets what is left
        b = pool.acquire(models["b"], "sha-b", "b")
        assert b.tokenize(b"x")
        assert pool.record(b).gpu_layers == 1
        assert pool.record(a).resident
    pool.close()


def test_two_models_swap_under_a_budget_that_holds_one(gpus, models):
    full = gpu_cost(models["a"], -1)
    pool = Pool(memory_budget="inf", gpu_memory_budget=budget_for(full) + 1000, keep_alive=-1)
    a = pool.acquire(models["a"], "sha-a", "a", n_gpu_layers=-1)
    b = pool.acquire(models["b"], "sha-b", "b", n_gpu_layers=-1)
    for llm, other in [(a, b), (b, a), (a, b)]:
        assert llm.tokenize(b"x")
        assert pool.record(llm).resident and not pool.record(other).resident
    assert pool.metrics().evictions == 4  # acquiring b, then each switch: the other one goes
    pool.close()


def test_a_fixed_layer_count_that_does_not_fit_is_refused_naming_the_gpu_budget(gpus, models):
    pool = Pool(memory_budget="inf", gpu_memory_budget=budget_for(gpu_cost(models["a"], 0)))
    with pytest.raises(MemoryBudgetError) as info:
        pool.acquire(models["a"], "sha-a", "a", n_gpu_layers=-1)
    message = str(info.value)
    assert "'a'" in message and "gpu0" in message and "MODELFIX_GPU_MEMORY_BUDGET" in message
    assert 'n_gpu_layers="auto"' in message
    pool.close()


def test_the_ram_budget_counts_only_what_stays_on_the_cpu(gpus, models):
    on_gpu = estimate(models["a"], n_ctx=512, n_gpu_layers=-1, offload=True)
    on_cpu = estimate(models["a"], n_ctx=512)
    assert on_gpu.ram < on_cpu.total
    pool = Pool(memory_budget=on_gpu.ram + 1000, gpu_memory_budget="inf")
    assert pool.acquire(models["a"], "sha-a", "a", n_gpu_layers=-1).tokenize(b"x")  # would not fit in RAM alone
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        pool.acquire(models["b"], "sha-b", "b", n_gpu_layers=0).tokenize(b"x")
    pool.close()


def test_auto_gpu_budget_is_90_percent_of_free_memory_at_first_use(gpus, models):
    pool = Pool(memory_budget="inf", keep_alive=-1)
    full = gpu_cost(models["a"], -1)
    gpus[0] = GpuDevice(0, "CUDA0", int((CUDA_OVERHEAD + full) / 0.9) + 4096, 80 * GIB)
    a = pool.acquire(models["a"], "sha-a", "a")
    assert a.tokenize(b"x") and pool.record(a).gpu_layers == N_LAYER + 1
    gpus[0] = GpuDevice(0, "CUDA0", 80 * GIB, 80 * GIB)  # later answers do not move the budget
    b = pool.acquire(models["b"], "sha-b", "b", n_gpu_layers=-1)
    assert b.tokenize(b"x") and not pool.record(a).resident
    pool.close()


def test_layers_follow_the_tensor_split_across_two_gpus(gpus, models):
    gpus[:] = [GpuDevice(0, "CUDA0", 80 * GIB, 80 * GIB), GpuDevice(1, "CUDA1", 80 * GIB, 80 * GIB)]
    pool = Pool(memory_budget="inf", gpu_memory_budget="inf")
    est = estimate(models["a"], n_ctx=512, n_gpu_layers=-1, offload=True)
    spread = est.gpu_weights + est.gpu_kv
    costs = device_costs(est, pool_module.LoadSettings(tensor_split=(3.0, 1.0)), pool.gpus())
    assert costs == {"gpu0": int(spread * 0.75) + est.gpu_compute, "gpu1": int(spread * 0.25)}
    alone = device_costs(est, pool_module.LoadSettings(split_mode="none", main_gpu=1), pool.gpus())
    assert alone == {"gpu0": 0, "gpu1": est.gpu}
    pool.close()


@pytest.mark.parametrize(
    "change", [{"main_gpu": 0}, {"tensor_split": (1.0,)}, {"split_mode": "none"}, {"flash_attn": True}]
)
def test_gpu_settings_reach_llama_cpp_and_a_change_reloads(gpus, models, change):
    pool = Pool(memory_budget="inf", gpu_memory_budget="inf", keep_alive=-1)
    base = pool.acquire(models["a"], "sha-a", "a", split_mode="layer", main_gpu=0, flash_attn=False)
    other = pool.acquire(models["a"], "sha-a", "a", **{"split_mode": "layer", "main_gpu": 0, **change})
    if change in ({"main_gpu": 0},):
        assert other is base
        return
    assert other is not base
    assert other.tokenize(b"x")
    if "split_mode" in change:
        assert other.model_params.split_mode == llama_cpp.LLAMA_SPLIT_MODE_NONE
    if "tensor_split" in change:
        assert other.tensor_split == [1.0]
    pool.close()


def test_main_gpu_beyond_the_devices_is_refused_by_name(gpus, models):
    pool = Pool(memory_budget="inf", gpu_memory_budget="inf")
    with pytest.raises(SettingsError, match=r"main_gpu=3 for model 'a'.*1 GPU"):
        pool.acquire(models["a"], "sha-a", "a", main_gpu=3).tokenize(b"x")
    pool.close()


@pytest.mark.parametrize(
    ("value", "expected"), [("8GB", 8e9), ("2GiB", 2 * GIB), ("inf", math.inf), ("auto", None), ("", None)]
)
def test_gpu_memory_budget_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("MODELFIX_GPU_MEMORY_BUDGET", value)
    settings = resolve_pool_settings()
    assert settings.gpu_memory_budget == expected
    if expected is not None:
        assert settings.gpu_budget_origin == "MODELFIX_GPU_MEMORY_BUDGET"
    assert resolve_pool_settings({"gpu_memory_budget": "1GB"}).gpu_memory_budget == 1e9  # explicit wins


def test_bad_gpu_memory_budget_names_the_variable(monkeypatch):
    monkeypatch.setenv("MODELFIX_GPU_MEMORY_BUDGET", "lots")
    with pytest.raises(SettingsError, match="MODELFIX_GPU_MEMORY_BUDGET"):
        resolve_pool_settings()


def test_a_cpu_build_budgets_ram_only(models):
    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this build offloads")
    pool = Pool(memory_budget="inf", gpu_memory_budget=1)  # a GPU budget means nothing without a GPU
    llm = pool.acquire(models["a"], "sha-a", "a")
    assert llm.tokenize(b"x")
    assert pool.record(llm).gpu_layers == 0 and pool.record(llm).settings.n_gpu_layers == 0
    pool.close()


def _vram_used() -> int:
    import pynvml

    pynvml.nvmlInit()
    return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)


@pytest.mark.gpu
def test_unload_returns_vram_on_a_real_gpu(models, tmp_path):
    """On a real GPU (NVML): a load takes VRAM, unload gives it back though the user still holds the handle."""
    pytest.importorskip("pynvml")
    big = write_tiny_model(tmp_path / "big.gguf", n_layer=8, n_embd=1024, n_head=8, n_ff=2816, qtype="Q8_0")[0]
    pool = Pool(memory_budget="inf", gpu_memory_budget="inf", keep_alive=-1)
    warm = pool.acquire(models["a"], "sha-a", "a", n_gpu_layers=-1)  # the process's CUDA context, once
    warm("Hi", max_tokens=2)
    pool.unload(warm)
    gc.collect()
    before = _vram_used()
    llm = pool.acquire(big, "sha-big", "big", n_gpu_layers=-1)
    out = llm("Hello", max_tokens=4)  # the user keeps `llm` and `out`, as a notebook's Out[] would
    loaded = _vram_used()
    expected = pool.record(llm).estimate.gpu
    assert loaded - before > 0.5 * expected, (loaded - before, expected)
    pool.unload("big")
    gc.collect()
    after = _vram_used()
    assert after - before < 0.1 * (loaded - before), (before, loaded, after)
    assert out["choices"] and not pool.record(llm).resident
    pool.close()
