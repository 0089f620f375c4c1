"""The handle pool with real llama-cpp-python on tiny GGUF models: reuse, eviction, keep-alive, safety."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import llama_cpp
import pytest

from modelfix.errors import MemoryBudgetError, SettingsError
from modelfix.estimate import estimate
from modelfix.events import events
from modelfix.pool import Pool, PooledLlama, reset_handle
from modelfix.testing.gguf import write_mmproj, write_tiny_model


@pytest.fixture(autouse=True)
def _no_pool_env(monkeypatch):
    for var in ("MODELFIX_MAX_LOADED", "MODELFIX_N_CTX", "MODELFIX_SEED", "MODELFIX_THREADS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Three different tiny models, and a 3-part split set."""
    folder = tmp_path_factory.mktemp("pool-models")
    found = {name: write_tiny_model(folder / f"{name}.gguf", seed=i)[0] for i, name in enumerate("abc")}
    found["split"] = write_tiny_model(folder / "tiny-Q4_1.gguf", seed=9, split_parts=3)[0]
    return found


@pytest.fixture
def pool():
    pool = Pool(memory_budget="inf", keep_alive=-1, strategy="ram")
    yield pool
    pool.close()


@pytest.fixture
def recorded():
    """Every pool event emitted during the test, as (kind, model, status or message)."""
    seen: list = []
    with events.listening(seen.append):
        yield seen


def get(pool: Pool, models: dict[str, Path], name: str, **settings) -> PooledLlama:
    return pool.acquire(models[name], f"sha-{name}", name, **settings)


def text(llm, prompt: str = "Hello", **kwargs) -> str:
    return llm(prompt, max_tokens=6, temperature=0, **kwargs)["choices"][0]["text"]


def cost(models, name: str, n_ctx: int = 512) -> int:
    return estimate(models[name], n_ctx=n_ctx).total


# --- reuse ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "split"])
def test_equal_keys_share_one_handle(pool, models, recorded, name):
    first = get(pool, models, name)
    second = get(pool, models, name, n_ctx=512)  # the default, spelled out: same key
    assert first is second
    assert pool.metrics().loads == 1 and pool.metrics().hits == 1
    assert [(e.kind, e.status) for e in recorded if e.model == name] == [("load", "loading"), ("load", "loaded")]
    assert text(first)


@pytest.mark.parametrize("change", [{"n_ctx": 256}, {"n_gpu_layers": 1}, {"seed": 5}, {"embedding": True}])
def test_a_changed_setting_loads_another_handle(pool, models, change):
    base = get(pool, models, "a")
    other = get(pool, models, "a", **change)
    assert other is not base
    assert pool.metrics().loads == 2
    assert len(pool.loaded()) == 2
    if "n_ctx" in change:
        assert (base.n_ctx(), other.n_ctx()) == (512, 256)


def test_same_file_under_another_content_key_is_another_handle(pool, models):
    assert pool.acquire(models["a"], "sha-1", "a") is not pool.acquire(models["a"], "sha-2", "a")


def test_the_handle_is_a_llama(pool, models):
    llm = get(pool, models, "a")
    assert isinstance(llm, llama_cpp.Llama)
    assert llm.tokenize(b"hello world")[0] == llm.token_bos()
    chat = llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert llama_cpp.Llama.logits_to_logprobs is llm.logits_to_logprobs
    assert "create_completion" in dir(llm)
    assert "'a'" in repr(llm) and "resident" in repr(llm)


@pytest.mark.parametrize(
    ("via", "layers", "reported"),
    [
        ("call", 0, 0),
        ("call", 3, 3),
        ("call", -1, 0x7FFFFFFF),
        ("env", 2, 2),
    ],
)
def test_n_gpu_layers_reaches_llama_cpp(pool, models, monkeypatch, via, layers, reported):
    # This build has no GPU; llama.cpp still records the request in its model
    # params (-1 is stored as INT32_MAX, "every layer"), which is what we check.
    if via == "env":
        monkeypatch.setenv("MODELFIX_GPU_LAYERS", str(layers))
        llm = get(pool, models, "a")
    else:
        llm = get(pool, models, "a", n_gpu_layers=layers)
    assert llm.model_params.n_gpu_layers == reported
    assert text(llm)


def test_frontend_and_lockfile_layers_reach_the_handle(pool, models):
    # (llama.cpp rounds n_ctx up to a multiple of 256, so the sizes here are such multiples)
    llm = pool.acquire(models["a"], "sha-a", "a", {"n_ctx": 256}, load_options={"n_ctx": 768})
    assert llm.n_ctx() == 768
    assert pool.acquire(models["a"], "sha-a", "a", {"n_ctx": 256}).n_ctx() == 256


def test_the_old_frontend_keyword_still_works_and_says_it_is_deprecated(pool, models):
    with pytest.warns(DeprecationWarning, match="load_options="):
        llm = pool.acquire(models["a"], "sha-a", "a", frontend={"n_ctx": 768})
    assert llm.n_ctx() == 768


def test_unknown_setting_is_refused_before_loading(pool, models):
    with pytest.raises(SettingsError, match=r"unknown setting 'ctx'.*n_ctx"):
        get(pool, models, "a", ctx=128)
    assert pool.metrics().loads == 0


# --- eviction --------------------------------------------------------------------


def test_budget_evicts_least_recently_used_first(models, recorded):
    each = cost(models, "a")
    pool = Pool(memory_budget=int(2.5 * each), keep_alive=-1)
    try:
        a = get(pool, models, "a")
        get(pool, models, "b")
        text(a)  # a is now more recent than b
        get(pool, models, "c")
        assert sorted(r.name for r in pool.loaded()) == ["a", "c"]
        assert [e.model for e in recorded if e.kind == "evict"] == ["b"]
        assert pool.metrics().evictions == 1
    finally:
        pool.close()


def test_max_count_evicts_least_recently_used_first(models, recorded):
    pool = Pool(memory_budget="inf", max_count=2, keep_alive=-1)
    try:
        for name in "abc":
            get(pool, models, name)
        get(pool, models, "a")  # a was evicted by c: this loads it again, evicting b
        assert [e.model for e in recorded if e.kind == "evict"] == ["a", "b"]
        assert [r.name for r in pool.loaded()] == ["a", "c"]
    finally:
        pool.close()


def test_a_handle_in_use_is_never_evicted(models):
    pool = Pool(memory_budget="inf", max_count=1, keep_alive=-1)
    try:
        a = get(pool, models, "a")
        with pool.use(a) as llm:
            assert type(llm) is llama_cpp.Llama
            with pytest.raises(MemoryBudgetError, match=r"at most 1 handle.*in use \(a\)"):
                get(pool, models, "b")
            assert text(llm)  # still alive
        get(pool, models, "b")  # after the block, a is idle and makes room
        assert [r.name for r in pool.loaded()] == ["b"]
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("env", "(MODELFIX_MEMORY_BUDGET). To load it, raise MODELFIX_MEMORY_BUDGET,"),
        ("configure", "(set by a front-end option or modelfix.configure()). To load it, raise it where it was set"),
    ],
)
def test_over_budget_load_is_refused_with_sizes_and_where_the_budget_was_set(models, monkeypatch, where, named):
    budget = cost(models, "a") // 2
    if where == "env":
        monkeypatch.setenv("MODELFIX_MEMORY_BUDGET", str(budget))
    pool = Pool(memory_budget=budget if where == "configure" else None)
    try:
        with pytest.raises(MemoryBudgetError) as info:
            get(pool, models, "a")
        message = str(info.value)
        assert "'a'" in message and "needs about" in message and "KV cache" in message
        assert "n_ctx=512" in message and "budget is" in message and named in message
        assert pool.metrics().loads == 0 and pool.loaded() == []
    finally:
        pool.close()


def test_budget_held_by_handles_in_use_is_named(models):
    pool = Pool(memory_budget=int(1.5 * cost(models, "a")))
    try:
        with pool.use(get(pool, models, "a")), pytest.raises(MemoryBudgetError, match=r"held by handles in use \(a\)"):
            get(pool, models, "b")
    finally:
        pool.close()


_RSS_SCRIPT = """
import gc, json, sys
from modelfix.events import events
from modelfix.pool import Pool

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

seen = []
pool = Pool(memory_budget="inf", keep_alive=-1)
with events.listening(seen.append):
    gc.collect()
    before = rss()
    llm = pool.acquire(sys.argv[1], "sha-wide", "wide", use_mmap=False)  # weights copied into RAM
    loaded = rss()
    pool.unload("wide")
    gc.collect()
    after = rss()
    works = bool(llm("Hello", max_tokens=4, temperature=0)["choices"][0]["text"])  # it reloads
pool.close()
print(json.dumps({"before": before, "loaded": loaded, "after": after, "works": works,
                  "evicted": [e.model for e in seen if e.kind == "evict"]}))
"""


def test_eviction_closes_the_llama_and_memory_comes_back(tmp_path):
    # A fresh process: in this one, memory freed by earlier tests may be reused by the load,
    # which would hide how much a load really takes.
    (path,) = write_tiny_model(tmp_path / "wide.gguf", target_bytes=48_000_000, qtype="F32")
    assert os.sysconf("SC_PAGE_SIZE") == 4096
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)
    weights = path.stat().st_size
    assert m["loaded"] - m["before"] > 0.9 * weights
    assert m["loaded"] - m["after"] > 0.8 * weights, f"only {(m['loaded'] - m['after']) / 1e6:.1f} MB came back"
    assert m["evicted"] == ["wide"]
    assert m["works"]  # the evicted handle is still usable: it reloads


def test_an_unknown_chat_format_is_refused_at_load_naming_the_known_ones(pool, models):
    with pytest.raises(SettingsError, match=r"chat_format 'no-such-format' for model 'a' .*Use one of: .*chatml"):
        text(get(pool, models, "a", chat_format="no-such-format"))
    llm = get(pool, models, "a", chat_format="chatml")
    assert llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=2)["choices"]


# --- threads ---------------------------------------------------------------------------------

_THREADS_SCRIPT = """
import json, os, sys, threading
from modelfix.pool import Pool

paths = json.loads(sys.argv[1])
pool = Pool(memory_budget="inf", keep_alive=-1)
shared = pool.acquire(paths["a"], "sha-a", "a", n_ctx=256)
expected = shared("Hello there", max_tokens=8, temperature=0)["choices"][0]["text"]
outputs, errors = [], []

def generate():  # every thread on the one shared handle, as a threaded server would
    try:
        for _ in range(10):
            outputs.append(shared("Hello there", max_tokens=8, temperature=0)["choices"][0]["text"])
    except Exception as exc:
        errors.append(repr(exc))

def load(name):  # loads (and closes) overlapping in threads
    try:
        for k in range(4):
            pool.acquire(paths[name], "sha-" + name, name, n_ctx=256 * (k + 1))("Hi", max_tokens=1)
            pool.unload(name)
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=generate) for _ in range(3)]
threads += [threading.Thread(target=load, args=(n,)) for n in ("b", "c")]
for t in threads:
    t.start()
for t in threads:
    t.join()
pool.close()
print(json.dumps({"same": outputs == [expected] * 30, "errors": errors,
                  "stdout": os.readlink("/proc/self/fd/1"), "stderr": os.readlink("/proc/self/fd/2")}))
"""


_STREAM_SCRIPTS = {
    # A stream made in one thread and read in another, while the first keeps calling.
    "handed-over": """
made = {}
def make():
    made["s"] = h("Hello", stream=True, max_tokens=24, temperature=0)
t = threading.Thread(target=make); t.start(); t.join()
reader_text = []
reader = threading.Thread(target=lambda: reader_text.extend(c["choices"][0]["text"] for c in made["s"]))
reader.start()
calls = [h("Hi", max_tokens=6, temperature=0)["choices"][0]["text"] for _ in range(5)]
reader.join()
result = {"stream": "".join(reader_text) == expected_stream, "calls": calls == [expected_call] * 5}
""",
    # The thread reading a stream made elsewhere calls the handle inside its loop.
    "reader-calls-inside": """
s = h("Hello", stream=True, max_tokens=24, temperature=0)
seen = []
def read():
    for c in s:
        seen.append(len(h.tokenize(b"x")) > 0 and bool(h.metadata is not None))
t = threading.Thread(target=read); t.start(); t.join(60)
result = {"finished": not t.is_alive(), "all": all(seen) and len(seen) > 1}
""",
    # A half-read stream collected by the garbage collector in the middle of another model's load.
    "collected-during-a-load": """
pool.configure(keep_alive=0)
s = h("Hello", stream=True, max_tokens=24)
next(s)
class Cycle: pass
c = Cycle(); c.me, c.s = c, s
del c, s
gc.set_threshold(1)
other = pool.acquire(paths["b"], "sha-b", "b", n_ctx=256)
result = {"other": bool(other("Hi", max_tokens=2)["choices"])}
gc.set_threshold(700)
""",
    # A stream nobody finishes: another thread waits, says why after a while, and goes on once it is closed.
    "abandoned": """
import modelfix.handle
modelfix.handle.Turns._PATIENCE = 0.3
s = h("Hello", stream=True, max_tokens=24)
next(s)
out = []
t = threading.Thread(target=lambda: out.append(h("Hi", max_tokens=2)["choices"][0]["text"]))
t.start(); t.join(1.0)
waited = t.is_alive()
s.close(); t.join(60)
result = {"waited": waited, "then": len(out) == 1}
""",
}

_STREAM_PRELUDE = """
import gc, json, logging, sys, threading
from modelfix.pool import Pool
logging.basicConfig(level=logging.WARNING)
paths = json.loads(sys.argv[1])
pool = Pool(memory_budget="inf", keep_alive=-1)
h = pool.acquire(paths["a"], "sha-a", "a", n_ctx=256)
expected_stream = "".join(c["choices"][0]["text"] for c in h("Hello", stream=True, max_tokens=24, temperature=0))
expected_call = h("Hi", max_tokens=6, temperature=0)["choices"][0]["text"]
"""


@pytest.mark.parametrize("scenario", list(_STREAM_SCRIPTS))
def test_streams_and_threads_neither_crash_nor_hang(models, scenario):
    script = _STREAM_PRELUDE + _STREAM_SCRIPTS[scenario] + "\nprint(json.dumps(result))\n"
    paths = json.dumps({k: str(v) for k, v in models.items()})
    out = subprocess.run([sys.executable, "-c", script, paths], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(result.values()), result
    if scenario == "abandoned":
        assert "waiting for model 'a'" in out.stderr and "exhausted or closed" in out.stderr


def test_threads_sharing_a_handle_take_turns_and_loads_keep_the_process_output(models, tmp_path):
    # In a subprocess: without turns llama.cpp aborts the whole process, and overlapping silenced
    # loads used to leave its stdout and stderr pointing at /dev/null for good.
    paths = json.dumps({k: str(v) for k, v in models.items()})
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, paths], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip(), "the process's output was lost"
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["errors"] == [] and report["same"]
    assert "/dev/null" not in (report["stdout"], report["stderr"])


# --- eviction never crashes a holder ----------------------------------------------------


def test_an_evicted_handle_reloads_on_its_next_call(pool, models):
    llm = get(pool, models, "a")
    expected = text(llm)
    assert pool.unload(llm) == 1
    assert pool.loaded() == [] and "not resident" in repr(llm)
    assert text(llm) == expected  # a closed Llama here would crash the process
    assert pool.metrics().reloads == 1 and pool.metrics().loads == 2


def test_a_stream_holds_its_handle_until_exhausted(pool, models):
    llm = get(pool, models, "a")
    stream = llm("Hello", max_tokens=4, temperature=0, stream=True)
    first = next(stream)
    pool.unload("a")  # deferred: the stream is still using it
    assert [r.name for r in pool.loaded()] == ["a"] and pool.loaded()[0].in_use
    rest = list(stream)
    assert first and len(rest) >= 1
    assert pool.loaded() == []  # closed once the stream let go


@pytest.mark.parametrize("chunks", [0, 1], ids=["unread", "half-read"])
def test_a_dropped_stream_releases_its_lease(pool, models, chunks):
    # Half-read: `next(it)` in a notebook cell, then `del it`. The handle's turn kept the
    # stream alive, so its lease (and the model, through unload and keep-alive) stayed for good.
    llm = get(pool, models, "a")
    stream = llm("Hello", max_tokens=4, stream=True)
    for _ in range(chunks):
        next(stream)
    del stream
    gc.collect()
    assert not pool.loaded()[0].in_use
    assert pool.unload("a") == 1 and pool.loaded() == []


def test_concurrent_first_loads_of_one_key_load_once(pool, models):
    handles: list = []
    threads = [threading.Thread(target=lambda: handles.append(get(pool, models, "b"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(h) for h in handles}) == 1
    assert pool.metrics().loads == 1


# --- keep-alive and strategies ----------------------------------------------------------


def test_idle_handles_expire_without_further_pool_calls(models):
    expired = threading.Event()

    def listen(event):
        if event.kind == "evict" and event.model == "a" and event.message == "keep-alive":
            expired.set()

    pool = Pool(memory_budget="inf", keep_alive=0.2)
    try:
        with events.listening(listen):
            started = time.monotonic()  # before the load: its last use is later, so its expiry too
            llm = get(pool, models, "a")
            assert expired.wait(5), "the keep-alive thread did not release the idle handle"
        assert time.monotonic() - started >= 0.2
        assert pool.loaded() == []
        assert text(llm)  # and it comes back on use
    finally:
        pool.close()


def test_keep_alive_counts_from_the_last_use(models, clock):
    pool = Pool(memory_budget="inf", keep_alive=2.0, clock=clock)
    try:
        llm = get(pool, models, "a")
        clock.advance(1.2)
        text(llm)
        clock.advance(1.2)
        # 2.4 s since the load, but only 1.2 s since the last call
        assert pool.reap() == 0 and [r.name for r in pool.loaded()] == ["a"]
        clock.advance(0.8)  # 2.0 s since the last call
        pool.reap()  # (or the keep-alive thread, had it woken up first)
        assert pool.loaded() == []
    finally:
        pool.close()


def test_keep_alive_zero_waits_for_the_first_call(models, clock):
    pool = Pool(memory_budget="inf", keep_alive=0, clock=clock)
    try:
        llm = get(pool, models, "a")
        clock.advance(3600)
        assert pool.reap() == 0 and len(pool.loaded()) == 1  # loaded, never called: kept for its first call
        text(llm)
        assert pool.loaded() == []  # closed as the call returned
    finally:
        pool.close()


def test_strategy_none_unloads_after_each_use(models, monkeypatch):
    monkeypatch.setenv("MODELFIX_POOL_STRATEGY", "none")
    pool = Pool(memory_budget="inf")
    try:
        llm = get(pool, models, "a")
        assert len(pool.loaded()) == 1  # loaded and waiting for its first call
        text(llm)
        assert pool.loaded() == []
        text(llm)  # loads again for this call only
        assert pool.loaded() == [] and pool.metrics().loads == 2
    finally:
        pool.close()


def test_strategy_ssd_keeps_one_resident(models):
    pool = Pool(memory_budget="inf", strategy="ssd")
    try:
        get(pool, models, "a")
        get(pool, models, "b")
        assert [r.name for r in pool.loaded()] == ["b"]
        pool.configure(max_count=2)  # explicit count overrides the preset
        get(pool, models, "c")
        assert sorted(r.name for r in pool.loaded()) == ["b", "c"]
    finally:
        pool.close()


# --- reporting ----------------------------------------------------------------


def test_loaded_records_and_metrics(pool, models, recorded):
    before = time.time()
    get(pool, models, "a", n_ctx=256)
    get(pool, models, "a", n_ctx=256)
    get(pool, models, "b")
    records = pool.loaded()
    assert [r.name for r in records] == ["b", "a"]  # most recent first
    a = records[1]
    assert a.settings.n_ctx == 256 and a.hits == 1 and a.loads == 1 and not a.in_use
    assert a.cost == estimate(models["a"], n_ctx=256).total and a.content_key == "sha-a"
    assert before <= a.last_used <= time.time()
    with pytest.raises(AttributeError):
        a.hits = 2  # type: ignore[misc]  # frozen: assigning is what this checks
    metrics = pool.metrics()
    assert {k: getattr(metrics, k) for k in ("hits", "misses", "loads", "evictions", "resident")} == {
        "hits": 1,
        "misses": 2,
        "loads": 2,
        "evictions": 0,
        "resident": 2,
    }
    assert set(metrics.load_seconds) == {"a", "b"} and all(s > 0 for s in metrics.load_seconds.values())
    loaded_events = [e for e in recorded if e.kind == "load" and e.status == "loaded"]
    assert [e.model for e in loaded_events] == ["a", "b"] and all(e.seconds > 0 for e in loaded_events)


def test_unload_by_name_closes_every_setting_of_that_model(pool, models):
    get(pool, models, "a")
    get(pool, models, "a", n_ctx=128)
    get(pool, models, "b")
    assert pool.unload("a") == 2
    assert pool.unload("a") == 0
    assert [r.name for r in pool.loaded()] == ["b"]
    assert pool.metrics().evictions == 0  # an explicit unload is not an eviction


# --- behaviour of the handles ---------------------------------------------------------


def test_fixed_seed_at_temperature_zero_repeats_across_handles(models):
    outputs = []
    for _ in range(2):
        pool = Pool(memory_budget="inf")
        try:
            outputs.append(text(get(pool, models, "a", seed=42), "Hello world"))
        finally:
            pool.close()
    assert outputs[0] == outputs[1] and outputs[0]


def test_reset_handle_makes_sampling_repeat(pool, models):
    llm = get(pool, models, "a")

    def sample() -> str:
        return llm("The", max_tokens=8, temperature=1.5, top_k=0, top_p=1.0)["choices"][0]["text"]

    reset_handle(llm, 7)
    first = sample()
    later = [sample() for _ in range(3)]  # without a reset the seed moves on
    reset_handle(llm, 7)
    assert sample() == first
    assert any(s != first for s in later)


@pytest.mark.parametrize("where", ["call", "lockfile"])
def test_embedding_handles_embed(pool, models, where):
    if where == "call":
        llm = get(pool, models, "a", embedding=True)
    else:
        llm = pool.acquire(models["a"], "sha-a", "a", {"embedding": True})
    vectors = llm.embed("hello world")
    assert len(vectors) > 0 and all(isinstance(x, float) for x in vectors[0])


def test_mmproj_is_passed_only_when_asked_and_present(pool, models, tmp_path):
    with pytest.raises(SettingsError, match="no mmproj file"):
        get(pool, models, "a", mmproj=True)
    mmproj = write_mmproj(tmp_path / "mmproj.gguf")
    plain = pool.acquire(models["a"], "sha-a", "a", mmproj_path=mmproj)
    assert plain.chat_handler is None
    # The fixture projector is not a working vision model, so this checks the
    # wiring only: llama-cpp-python opens the projector at the first image chat.
    vision = pool.acquire(models["a"], "sha-a", "a", mmproj_path=mmproj, mmproj=True)
    assert vision.chat_handler.clip_model_path == str(mmproj)
    assert pool.loaded()[0].estimate.weights == models["a"].stat().st_size + mmproj.stat().st_size


@pytest.mark.parametrize("verbose", [False, True])
def test_llama_cpp_logs_only_when_verbose(pool, models, capfd, verbose):
    # n_ctx above the model's 512 makes llama.cpp warn while building the context.
    get(pool, models, "c", n_ctx=1024, verbose=verbose)
    err = capfd.readouterr().err
    assert ("n_ctx_seq" in err) is verbose


# --- through the lockfile: modelfix.load and the shared pool --------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A lockfile of local-path sources (a single file and a 3-part split), pinned."""
    from modelfix.lockfile import Lockfile
    from modelfix.locking import write_pins
    from modelfix.sources import source_for

    folder = tmp_path / "project"
    write_tiny_model(folder / "tiny-Q4_0.gguf", seed=1)
    write_tiny_model(folder / "tiny-Q4_1.gguf", seed=2, split_parts=3)
    lock = folder / "model-lock.toml"
    lock.write_text(
        "version = 1\n\n"
        '[models.tiny]\nsource = "./tiny-Q4_0.gguf"\nn_ctx = 256\nseed = 3\n\n'
        '[models.split]\nsource = "./tiny-Q4_1-00001-of-00003.gguf"\n\n'
        '[models.vectors]\nsource = "./tiny-Q4_0.gguf"\nembedding = true\n',
        encoding="utf-8",
    )
    entries = Lockfile.load(lock).entries
    write_pins(lock, {name: source_for(e.source, lock).resolve() for name, e in entries.items()})
    return lock


@pytest.fixture
def shared():
    """The process-wide pool, emptied afterwards."""
    from modelfix.pool import default_pool

    yield default_pool()
    default_pool().close()


def test_load_by_name_uses_the_lockfile_settings(project, shared):
    import modelfix

    llm = modelfix.load("tiny", project)
    assert isinstance(llm, llama_cpp.Llama)
    assert llm.n_ctx() == 256  # from [models.tiny]
    assert modelfix.load("tiny", project) is llm
    assert modelfix.load("tiny", project, n_ctx=512) is not llm
    (record, *_) = [r for r in modelfix.loaded() if r.settings.n_ctx == 256]
    assert record.name == "tiny" and record.settings.seed == 3 and record.hits == 1
    assert modelfix.pool_metrics().hits >= 1
    assert text(llm)


def test_split_model_loads_from_its_first_part(project, shared):
    import modelfix

    llm = modelfix.load("split", project)
    assert llm.model_path.endswith("-00001-of-00003.gguf")
    assert text(llm)
    assert modelfix.loaded()[0].estimate.weights == sum(
        p.stat().st_size for p in project.parent.glob("tiny-Q4_1-*.gguf")
    )


def test_embedding_entry_gives_an_embedding_handle(project, shared):
    import modelfix

    assert len(modelfix.load("vectors", project).embed("hello")[0]) == 64


def test_preload_then_unload(project, shared):
    import modelfix

    handles = modelfix.preload(["tiny", "split"], project)
    assert sorted(r.name for r in modelfix.loaded()) == ["split", "tiny"]
    assert modelfix.load("split", project) is handles[1]
    assert modelfix.unload("tiny") == 1
    assert [r.name for r in modelfix.loaded()] == ["split"]
    with modelfix.use("tiny", project) as llm:  # the evicted model comes back for the block
        assert type(llm) is llama_cpp.Llama and text(llm)


def test_display_probes_do_not_reload_an_evicted_handle(pool, models):
    llm = get(pool, models, "a")
    pool.unload(llm)
    for probe in ("_repr_html_", "_ipython_canary_method_should_not_exist_", "_ipython_display_"):
        assert getattr(llm, probe, None) is None
    assert pool.metrics().loads == 1


def test_a_model_llama_cpp_cannot_load_is_a_clear_error(pool, models, tmp_path, recorded):
    from modelfix.errors import ModelfixError

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(models["a"].read_bytes()[:-4096])  # header intact, weights cut short
    with pytest.raises(ModelfixError, match=r"llama.cpp could not load model 'broken'.*verify"):
        pool.acquire(broken, "sha-broken", "broken")
    assert [e.status for e in recorded if e.model == "broken"] == ["loading", "failed"]
    assert pool.loaded() == []
    assert text(get(pool, models, "a"))  # the pool is still usable
