"""The pytest front end: model fixtures, the ``model`` marker, ``--modelfix-*`` options, reporting.

Registered through the ``pytest11`` entry point, so pytest imports this module
at every start-up, also for suites that never touch a model: it imports nothing
heavy. llama_cpp, huggingface_hub and fsspec load when a fixture first needs a
model (or the header asks llama.cpp about GPU offload, only when a lockfile exists).

    name                        what it is
    --------------------------  -----------------------------------------------------
    modelfix        (session)   ModelfixSession: lockfile, path(), files(), load(), loaded()
    modelfix_model  (function)  the test's model name: marker, per-model parameter or the only one
    llama           (function)  that model's pool handle, state reset (KV cache, seed) first
    model_snapshot  (function)  ``assert model_snapshot == value``: snapshot tests, with their
                                --modelfix-snapshot-* options and summary line (see
                                :mod:`modelfix._pytest_snapshots`, loaded through ``pytest_plugins``)
    @pytest.mark.model(NAMES, **settings)
                                several names = the test runs once per model (ids = names);
                                require_gpu=True skips on builds without GPU offload
    pytest_report_header        lockfile, cache dir (and read-only caches), models, GPU offload; the backend probe's
                                verdict (probing, once per machine, when the lockfile has models)
    pytest_terminal_summary     models used, bytes fetched, cache hits, load times, pool and
                                cache evictions: only if a test used a fixture (see
                                :mod:`modelfix._pytest_report`)

Options come, highest first, from the command line, the ini file, then the
core's own environment variables and defaults; they are read once, into
:class:`~modelfix._pytest_options.PluginOptions`, which builds the run's one
:class:`~modelfix.Project`: the session object is glue over it (what the fixtures
fetched and loaded, for the summary; offline errors said once).

Under pytest-xdist every worker shares the store (one download per blob, the
store's lock sees to that) and keeps its own handles and counters; each worker
hands its counters to the controller through ``workeroutput`` and the
controller prints the one merged summary. A worker's fetch lines travel with
its test reports, and the controller prints them (see :mod:`modelfix._pytest_report`).
A worker that goes down (llama.cpp crashed) is named in the summary with the
model it was loading or using (see :mod:`modelfix._pytest_breadcrumbs`).

Offline with a model missing from the cache, the first test that meets it (or
``--modelfix-preload``, before the tests) shows the core's full OfflineError:
the models, their files and the command that fetches them. Later tests that
meet the same error get one line that points there.

The core's pluggy hooks (``modelfix_adjust_settings``, ``modelfix_parse_source``)
are also pytest hooks here, named ``pytest_modelfix_*`` as pytest requires, so a
``conftest.py`` implements them as plain functions (see :mod:`modelfix._pytest_hooks`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._pytest_breadcrumbs import Breadcrumbs, crash_report
from ._pytest_hooks import HookBridge, PytestHookSpecs
from ._pytest_options import ModelfixWarning, PluginOptions, add_options, warn_budget
from ._pytest_report import PRELOAD_LINE, OfflineNotes, Recorder, WorkerReports, worker_output
from .errors import LockError, ModelfixError, OfflineError, SettingsError
from .events import events

if TYPE_CHECKING:
    import pluggy

    from .config import CacheSettings
    from .handle import PooledLlama
    from .lockfile import Lockfile
    from .project import Project
    from .resolver import Materialized

__all__ = ["PluginOptions", "ModelfixSession", "ModelfixWarning", "modelfix", "modelfix_model", "llama"]

# Loaded with this module (and switched off with it by -p no:modelfix).
pytest_plugins = ["modelfix._pytest_snapshots"]

MARKER = "model"
# Marker keywords that steer the plugin instead of reaching llama.cpp.
_MARKER_ONLY = ("require_gpu",)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


# --- the session object --------------------------------------------------------------------


class ModelfixSession:
    """What the ``modelfix`` fixture gives a test: the run's :class:`~modelfix.Project` and its models.

    ``path``/``files`` fetch what is missing; ``load`` hands out a handle from
    the shared pool, with this run's options (``--modelfix-gpu-layers``, ...)
    as the front-end layer of the settings. Around each, the events the core emits
    are this run's to report (:class:`~modelfix._pytest_report.Recorder`).
    """

    def __init__(self, config: pytest.Config, options: PluginOptions) -> None:
        self.options = options
        self.recorder = Recorder(config)
        self.stats = self.recorder.counters
        self._config = config
        self._project: Project | None = None
        self._bridge: HookBridge | None = None
        self._pool_configured = False
        self._on_disk: set[str] = set()
        self.model: str | None = None  # the model of the latest fetch or load
        self.offline = OfflineNotes()
        worker = getattr(config, "workerinput", {})
        self.breadcrumbs = Breadcrumbs(worker.get("modelfix_breadcrumbs"), worker.get("workerid"))
        self.crashes: list[str] = []  # the controller's lines on workers that went down

    @property
    def project(self) -> Project:
        """The run's Project: the lockfile found from the invocation folder (or named by
        ``--modelfix-lock``), with this run's cache and load options."""
        if self._project is None:
            from .lockfile import LOCK_NAME, find_lockfile

            start = self._config.invocation_params.dir
            try:
                path = find_lockfile(self.options.lock, start=start)
            except LockError:  # none upward: say how to point at one from pytest
                raise LockError(
                    f"no {LOCK_NAME} in {start} or any parent folder. Create one with `modelfix add NAME SOURCE`, "
                    "or pass --modelfix-lock PATH (or set modelfix_lock in the ini file)."
                ) from None
            # From the worker's own config, not PYTEST_XDIST_WORKER*: a pytest run as a
            # subprocess of a worker inherits those variables.
            workers = getattr(self._config, "workerinput", {}).get("workercount")
            self._project = self.options.project(Path(os.path.abspath(path)), workers)
        return self._project

    @property
    def made_project(self) -> Project | None:
        """The run's Project if something asked for it already, else None (never finds a lockfile)."""
        return self._project

    @property
    def lockfile(self) -> Lockfile:
        return self.project.lockfile

    def explain(self, error: ModelfixError, where: str) -> tuple[str, bool]:
        """The report of ``error`` for the test (or step) ``where``, and whether it is the full message.

        An OfflineError is shown in full once; the next ones with the same message are one
        line that points at where it was (see :class:`~modelfix._pytest_report.OfflineNotes`).
        """
        if not isinstance(error, OfflineError):
            return f"{type(error).__name__}: {error}", True
        return self.offline.note(str(error), self.model or "the model", where)

    def default_model(self) -> str:
        """The model of a test without a marker: the lockfile's only one."""
        names = list(self.lockfile.entries)
        if len(names) == 1:
            return names[0]
        if not names:
            raise LockError(f"{self.lockfile.path} has no models. Add one with `modelfix add NAME ORG/REPO:TAG`.")
        raise LockError(
            f"{self.lockfile.path} has several models ({', '.join(names)}): say which one this test "
            f'uses with @pytest.mark.model("NAME").'
        )

    def files(self, name: str) -> Materialized:
        """Every file of model ``name`` in its view, fetched if missing."""
        with self._working_on(name):
            return self.project.files(name)

    def path(self, name: str) -> Path:
        """The first model file of ``name`` (split siblings beside it)."""
        return self.files(name).model_path

    def load(self, name: str, **settings: Any) -> PooledLlama:
        """A ready handle from the shared pool (the same one for the same model and settings)."""
        with self._working_on(name):
            return self.project.load(name, **settings)

    def loaded(self) -> list[Any]:
        """What the pool holds now."""
        return self.project.loaded()

    @contextlib.contextmanager
    def _working_on(self, name: str) -> Iterator[None]:
        """Around each fetch or load for a test: what the core reports meanwhile is this run's."""
        self.lockfile.entry(name)  # a name not in the lockfile fails here, and is not "used"
        self.model = name
        self.stats.use(name)
        if self._bridge is None:
            # Late on purpose: by the first model, collection has imported every conftest.py.
            self._bridge = HookBridge(self._config)
            self._bridge.register()
        if not self._pool_configured:
            budgets = {"memory_budget": self.options.memory_budget, "gpu_memory_budget": self.options.gpu_memory_budget}
            if any(v is not None for v in budgets.values()):
                self.project.pool.configure(**budgets)
        self._pool_configured = True
        self.breadcrumbs.loading(name)
        with self.recorder.recording():
            yield
        self.breadcrumbs.using(name)
        if name not in self._on_disk:
            self._on_disk.add(name)
            self.stats.ready(name)

    def close(self) -> None:
        if self._bridge is not None:
            self._bridge.unregister()


# --- configuration and session ---------------------------------------------------------------

_SESSION = pytest.StashKey[ModelfixSession]()
_UNSUBSCRIBE = pytest.StashKey[Callable[[], None]]()
_BREADCRUMBS = pytest.StashKey[str]()  # the controller's folder of worker breadcrumbs


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(PytestHookSpecs)


def _session(config: pytest.Config) -> ModelfixSession:
    return config.stash[_SESSION]


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _is_controller(config: pytest.Config) -> bool:
    return (
        not _is_worker(config)
        and bool(getattr(config.option, "numprocesses", None))
        and getattr(config.option, "dist", "no") != "no"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names, require_gpu=False, **settings): the lockfile models this test uses "
        "(several names: one run per model) and their load settings.",
    )
    config.addinivalue_line(
        "markers", "gpu: needs a GPU: runs where the llama.cpp build offloads and a GPU is seen, else skips"
    )
    session = ModelfixSession(config, PluginOptions.from_config(config))
    config.stash[_SESSION] = session
    config.stash[_UNSUBSCRIBE] = events.subscribe(session.recorder)
    if _is_controller(config):
        import tempfile

        config.pluginmanager.register(WorkerReports(session.recorder.progress, session.offline), "modelfix-workers")
        warn_budget(config, session.options, int(config.option.numprocesses))
        config.stash[_BREADCRUMBS] = tempfile.mkdtemp(prefix="modelfix-xdist-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _UNSUBSCRIBE in config.stash:
        config.stash[_UNSUBSCRIBE]()
    if _SESSION in config.stash:
        _session(config).close()
    if _BREADCRUMBS in config.stash:
        import shutil

        shutil.rmtree(config.stash[_BREADCRUMBS], ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, in the controller: tell each worker where to leave its breadcrumbs."""
    if _BREADCRUMBS in node.config.stash:
        node.workerinput["modelfix_breadcrumbs"] = node.config.stash[_BREADCRUMBS]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    crumbs = _session(item.config).breadcrumbs
    crumbs.test_started(item.nodeid)
    try:
        return (yield)
    finally:
        crumbs.test_finished()


# --- marker, parametrisation, preload --------------------------------------------------------

_PRELOAD = "the --modelfix-preload message above the test results"  # where a preload's OfflineError is shown


def _marker(node: pytest.Item | pytest.Function) -> tuple[tuple[str, ...], dict[str, Any], bool]:
    """(names, load settings, require_gpu) of the closest ``model`` marker.

    Names are not checked here (collection hooks call this): :func:`_checked_names` does it
    in the test's setup, so that a bad marker fails its own test with one line, not the module.
    """
    marker = node.get_closest_marker(MARKER)
    if marker is None:
        return (), {}, False
    settings = {k: v for k, v in marker.kwargs.items() if k not in _MARKER_ONLY}
    return tuple(marker.args), settings, bool(marker.kwargs.get("require_gpu", False))


def _checked_names(node: pytest.Item) -> tuple[str, ...]:
    names = _marker(node)[0]
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        unpacked = [n for name in names for n in (name if isinstance(name, (list, tuple)) else [name])]
        example = ", ".join(map(repr, unpacked)) if all(isinstance(n, str) for n in unpacked) else '"chat", "coder"'
        raise SettingsError(
            f"@pytest.mark.model of {node.name} takes model names of the lockfile as separate strings, "
            f"got {bad[0]!r}: write @pytest.mark.model({example})."
        )
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names, _, _ = _marker(metafunc.definition)
    if not all(isinstance(n, str) for n in names):
        return  # the test's setup says what is wrong (see _checked_names)
    if len(names) > 1 and "modelfix_model" in metafunc.fixturenames:
        metafunc.parametrize("modelfix_model", names, indirect=True, ids=names)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A skip marker, not pytest.skip() in setup: the report then points at the test, not at us.
    needs_gpu = [item for item in items if _marker(item)[2]]
    if needs_gpu and not _session(config).options.strict and (why := _no_gpu()):
        for item in needs_gpu:
            item.add_marker(pytest.mark.skip(reason=f"needs GPU offload (require_gpu=True) and {why}"))
    marked_gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if marked_gpu and (why := _no_gpu()):
        for item in marked_gpu:
            item.add_marker(pytest.mark.skip(reason=f"marked gpu, and {why}"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    _, _, require_gpu = _marker(item)
    if require_gpu and _session(item.config).options.strict and (why := _no_gpu()):
        pytest.fail(f"needs GPU offload (require_gpu=True) and {why} (--modelfix-strict)", pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    config = session.config
    state = _session(config)
    if not state.options.preload or _is_controller(config) or config.option.collectonly:
        return
    wanted: dict[tuple[str, str], dict[str, Any]] = {}
    for item in session.items:
        names, settings, _ = _marker(item)
        if "llama" not in getattr(item, "fixturenames", ()) or not all(isinstance(n, str) for n in names):
            continue
        if not names:
            try:
                names = (state.default_model(),)
            except ModelfixError:
                continue  # the test itself fails with the error, naming the models to choose from
        for name in names:
            # repr, not the values: settings may be lists (tensor_split), which do not hash
            wanted.setdefault((name, repr(sorted(settings.items()))), settings)
    for (name, _), settings in wanted.items():
        try:
            state.load(name, **settings)
        except OfflineError as exc:  # said here in full, once; each test that needs it points here
            text, full = state.explain(exc, _PRELOAD)
            if full:
                state.recorder.progress.write(PRELOAD_LINE + text)
        except ModelfixError:
            pass  # the tests that need it fail with the error itself


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def modelfix(pytestconfig: pytest.Config) -> ModelfixSession:
    """The lockfile and its models: ``path(name)``, ``files(name)``, ``load(name, **settings)``, ``loaded()``."""
    session = _session(pytestconfig)
    session.stats.requested = True
    return session


@pytest.fixture
def modelfix_model(request: pytest.FixtureRequest, modelfix: ModelfixSession) -> str:
    """This test's model name: its per-model parameter, its marker's name, or the lockfile's only model."""
    names = _checked_names(request.node)
    param = getattr(request, "param", None)
    if param is not None:
        return param
    return names[0] if names else modelfix.default_model()


@pytest.fixture
def llama(request: pytest.FixtureRequest, modelfix: ModelfixSession, modelfix_model: str) -> Iterator[PooledLlama]:
    """The pool handle for this test's model, with its state reset so outputs do not depend on test order."""
    from .handle import reset_handle
    from .pool import record
    from .settings import check_settings, repeatable_seed

    _, settings, _ = _marker(request.node)
    check_settings(settings, f"@pytest.mark.model of {request.node.name}; require_gpu is the marker's own")
    handle = modelfix.load(modelfix_model, **settings)
    # The handle's effective seed, as the pool resolved it; unset (llama.cpp's "random")
    # becomes 0 so that sampled outputs repeat from test to test.
    reset_handle(handle, repeatable_seed(record(handle).settings.seed))
    yield handle


# --- reporting -------------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    state = _session(item.config)
    error = call.excinfo.value if call.excinfo is not None else None
    # A modelfix error names the model and the fix; a traceback through the core only hides that.
    if isinstance(error, ModelfixError) and not item.config.option.fulltrace:
        report.longrepr = state.explain(error, item.nodeid)[0]
        if _is_worker(item.config) and isinstance(error, OfflineError):
            # For the controller: each worker shows the first it meets in full; the run, once.
            message = str(error)
            # xdist sends the report, and this with it, to the controller
            offline = [message, state.model or "the model", state.offline.first(message)]
            report.modelfix_offline = offline  # type: ignore[attr-defined]  # an attribute of ours on the report
    if _is_worker(item.config) and (lines := state.recorder.progress.held()):
        report.modelfix_lines = lines  # type: ignore[attr-defined]  # xdist sends the report, and this with it


def pytest_report_header(config: pytest.Config) -> str | list[str]:
    state = _session(config)
    try:
        lock = state.lockfile
    except ModelfixError as exc:
        return f"modelfix: {exc}"
    cache_settings = None
    try:
        cache_settings = state.project.cache_settings
    except ModelfixError as exc:
        cache, offline = f"unusable ({exc})", ""
    else:
        cache, offline = _cache_text(cache_settings), ", offline" if cache_settings.offline else ""
    names = ", ".join(lock.entries) or "none"
    line = f"modelfix: lockfile {lock.path}, cache {cache}{offline}, models: {names}, GPU offload: {_gpu_text(state)}"
    if not lock.entries or cache_settings is None:
        return line
    return [line, f"modelfix: llama.cpp {_backend(cache_settings)}{_threads_text(config)}"]


def _threads_text(config: pytest.Config) -> str:
    """``, 1 thread per handle (2 cores / 2 xdist workers)`` where xdist workers share the cores."""
    from ._pytest_options import cores, thread_share

    workers = getattr(config.option, "numprocesses", None)
    share = thread_share(workers) if _is_controller(config) and isinstance(workers, int) else None
    if share is None:
        return ""
    plural = "s" if share > 1 else ""
    return f", {share} thread{plural} per handle unless set ({cores()} cores / {workers} xdist workers)"


def _cache_text(settings: CacheSettings) -> str:
    """The store and the read-only caches in front of it: ``~/.cache/modelfix, read-only caches /opt/models``."""
    from .layers import unwritable

    why = unwritable(settings.root)
    store = f"{settings.root} (read-only here: {why})" if why else str(settings.root)
    layers = ", ".join(map(str, settings.layers))
    return f"{store}, read-only caches {layers}" if layers else store


def _backend(settings: CacheSettings) -> str:
    """The backend probe's verdict, as the run's loads will follow it (probed here, once per machine)."""
    from . import probe

    return probe.describe(settings.root, probe_now=True, layers=settings.layers)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = _session(config)
    stats = state.stats
    if not stats.anything and not state.crashes:
        return
    terminalreporter.write_sep("-", "modelfix")
    for line in [*state.crashes, *(stats.lines() if stats.anything else []), *_gpu_layers_chosen(state)]:
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _is_worker(session.config):
        state = _session(session.config)
        worker_output(session.config)["modelfix"] = state.stats.as_dict()
        worker_output(session.config)["modelfix_lines"] = state.recorder.progress.held()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    output = getattr(node, "workeroutput", {})
    state = _session(node.config)
    for line in output.get("modelfix_lines", ()):
        state.recorder.progress.write(line)
    if (stats := output.get("modelfix")) is not None:
        state.stats.merge(stats)
    if error is not None:
        try:
            sources = {name: entry.source for name, entry in state.lockfile.entries.items()}
        except ModelfixError:
            sources = {}
        line = crash_report(node.config.stash.get(_BREADCRUMBS, None), node.gateway.id, sources)
        if line is not None:
            state.crashes.append(f"modelfix: {line}")


def _no_gpu() -> str | None:
    """Why a GPU test cannot run here (no offload in the build, or no GPU seen), or None."""
    from .estimate import gpu_devices, offload_supported

    if not offload_supported():
        return "this llama-cpp-python build has none"
    if not gpu_devices():
        return "llama.cpp sees no GPU on this machine"
    return None


def _gpu_text(state: ModelfixSession) -> str:
    """``no``, or ``yes (CUDA0 ...), gpu layers auto``: the GPUs and how many layers handles take."""
    from .estimate import gpu_devices, offload_supported
    from .eviction import format_size

    if not offload_supported():
        return "no"
    devices = ", ".join(f"{d.name} {format_size(d.free)} free" for d in gpu_devices()) or "no GPU seen"
    layers = state.options.gpu_layers if state.options.gpu_layers is not None else "auto unless set"
    return f"yes ({devices}), gpu layers {layers}"


def _gpu_layers_chosen(state: ModelfixSession) -> list[str]:
    """``GPU layers: chat 25 (auto)``: what each resident handle offloaded, where any did."""
    if state.made_project is None:  # no fixture got a Project (no lockfile, say): no handle to name
        return []
    offloaded = [r for r in state.made_project.pool.loaded() if r.gpu_layers]
    how = {True: " (auto)", False: ""}
    text = ", ".join(f"{r.name} {r.gpu_layers}{how[r.settings.n_gpu_layers == 'auto']}" for r in offloaded)
    return [f"GPU layers: {text}"] if text else []
