"""The notebook magics: ``%load_model``, ``%models``, ``%unload_model``, ``%modelfix_cache``.

They are a thin front end over a :class:`modelfix.Project`, one per kernel and
``--lock`` (:meth:`ModelfixMagics.project`), as the pytest plugin and the CLI hold one;
nothing here decides what to fetch, what to keep resident or which setting wins.
The magic flags are the *front-end* layer of :mod:`modelfix.settings` (the Project's
``load_options``)::

    modelfix.load() kwargs  >  %load_model flags  >  MODELFIX_* env  >  lockfile  >  defaults

``%modelfix_cache --prune`` runs the Project's ``gc()`` and ``prune()``, as ``modelfix cache
gc`` and ``modelfix cache prune`` do, and shows their reports in the same words.

:func:`load` (``%load_ext``) registers the magics, the HTML formatters and
the one-line error display; :func:`unload` (``%unload_ext``, and the first
half of ``%reload_ext``) releases every handle these magics handed out and
undoes the rest, so a reload starts clean.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from . import errors, render
from .progress import reporter_for

if TYPE_CHECKING:
    from modelfix.project import Project

__all__ = ["ModelfixMagics", "load", "unload"]

_MAGICS = ("load_model", "models", "unload_model", "modelfix_cache")
_LOCK_HELP = "lockfile (default: MODELFIX_LOCK or the nearest model-lock.toml)"
# Tab completion: the magics whose argument is a model name, the flags that take a value, and
# the pattern of the line before the cursor that asks for it (also as `llm = %load_model ...`).
_COMPLETED = ("load_model", "unload_model")
_VALUED_FLAGS = ("--n-ctx", "--gpu-layers", "--main-gpu", "--lock", "--keep-alive")
_COMPLETION_KEY = r".*%(load_model|unload_model)\s"


def _parse_args(magic: Any, line: str) -> Any:
    """``line``'s arguments, split as a shell splits them: quotes group words and are removed.

    IPython's own ``parse_argstring`` keeps the quotes (``--lock "my models/model-lock.toml"``
    looked for a file named with the quotes), so a path with a space could not be given at all.
    """
    import os
    import shlex

    posix = os.name == "posix"  # on Windows a backslash separates a path's folders: it escapes nothing
    try:
        argv = [word if posix else _unquote(word) for word in shlex.split(line, posix=posix)]
    except ValueError as exc:  # "No closing quotation"
        raise UsageError(f"%{magic.__name__}: {exc} in {line!r}") from None
    return magic.parser.parse_args(argv)


def _unquote(word: str) -> str:
    return word[1:-1] if len(word) > 1 and word[0] == word[-1] and word[0] in "'\"" else word


def _gpu_layers(text: str) -> int | str:
    """``--gpu-layers``: ``auto`` or a number (-1 = all); argparse names the flag if it is neither."""
    import argparse

    from modelfix.setting_values import check_setting

    try:
        return check_setting("n_gpu_layers", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected {exc}") from None


@magics_class
class ModelfixMagics(Magics):
    """The magics, plus what they handed out (released again on unload)."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        # id(handle) -> (handle, its lockfile entry, the lockfile's path). The pool
        # keeps one handle per (files, settings) for the life of the process, so an
        # id is never reused for another handle.
        self.handed_out: dict[int, tuple[Any, Any, Any]] = {}
        # model -> (when, why) its handles were last released: %models shows it.
        self.released: dict[str, tuple[float, str]] = {}
        self._projects: dict[str | None, Project] = {}  # --lock -> this kernel's Project for it
        from modelfix.events import events

        self._unsubscribe = events.subscribe(self._on_event)

    def project(self, lock: str | None = None) -> Project:
        """This kernel's Project for ``--lock`` (None: ``MODELFIX_LOCK``, else the nearest model-lock.toml)."""
        found = self._projects.get(lock)
        if found is None:
            from modelfix.project import Project

            found = self._projects[lock] = Project(lock)
        return found

    # -- %load_model -----------------------------------------------------------

    @magic_arguments()
    @argument("name", help="model name: a [models.NAME] table of model-lock.toml")
    @argument("--n-ctx", type=int, metavar="N", help="context length (default: the lockfile's n_ctx, else 512)")
    @argument(
        "--gpu-layers",
        type=_gpu_layers,
        metavar="auto|N",
        help="layers to offload to the GPU (auto = as many as the GPU budget holds, the default where the "
        "build can offload; -1 = all)",
    )
    @argument("--main-gpu", type=int, metavar="N", help="the GPU (from 0) that holds the model (split_mode none)")
    @argument("--lock", metavar="PATH", help=_LOCK_HELP)
    @argument("--offline", action="store_true", help="never touch the network: fail if a file is not cached")
    @argument(
        "--keep-alive",
        metavar="T",
        help="release handles idle for T (30s, 5m, 1h; 0 = after each call, -1 = never); "
        "applies to every handle of this kernel",
    )
    @line_magic
    def load_model(self, line: str) -> Any:
        """Fetch (if needed), verify and load a pinned model; returns its pooled llama_cpp.Llama.

        ``llm = %load_model chat --n-ctx 2048``. The same name and settings give
        back the same handle at once; other settings load a second handle. The
        flags take the front end's place in the settings precedence: a
        modelfix.load() argument beats them; they beat MODELFIX_* variables,
        the lockfile and the defaults.
        """
        args = _parse_args(self.load_model, line)
        from modelfix.events import events

        base = self.project(args.lock)
        if args.keep_alive is not None:
            base.pool.configure(keep_alive=_duration(args.keep_alive))  # the pool's keep-alive is per process
        flags = {"n_ctx": args.n_ctx, "n_gpu_layers": args.gpu_layers, "main_gpu": args.main_gpu}  # None = not set
        project = base.derive(offline=True if args.offline else None, load_options=flags)
        reporter = reporter_for(self.shell, args.name)
        with events.listening(reporter):
            try:
                handle = project.load(args.name)
            except KeyboardInterrupt:
                # Ctrl-C / the kernel's interrupt: what became of the files, not the frames it stopped in.
                raise errors.LoadInterrupted(reporter.interrupted()) from None
            finally:
                reporter.finish()
        lockfile = project.lockfile
        self.handed_out[id(handle)] = (handle, lockfile.entry(args.name), lockfile.path)
        return handle

    # -- %models ---------------------------------------------------------------

    @magic_arguments()
    @argument("--lock", metavar="PATH", help=_LOCK_HELP)
    @line_magic
    def models(self, line: str) -> render.Table:
        """The lockfile's models: pins, whether cached, whether resident, memory, last use."""
        args = _parse_args(self.models, line)
        from modelfix.pool import record
        from modelfix.probe import describe

        project = self.project(args.lock)
        resident = project.loaded()
        seen = {(r.content_key, r.settings) for r in resident}
        # Released handles these magics handed out still count for "last used".
        records = resident + [r for r in map(record, self._handles()) if (r.content_key, r.settings) not in seen]
        cache = project.cache_settings
        summary = render.pool_summary(project.pool.settings(), project.pool.metrics())
        backend = f"llama.cpp: {describe(cache.root, layers=cache.layers)}"  # as known: %models never probes
        return render.models_table(project, records, self.released, footer=f"{summary}\n{backend}")

    # -- %unload_model ---------------------------------------------------------

    @magic_arguments()
    @argument("name", nargs="?", help="model whose handles to release")
    @argument("--all", action="store_true", help="release every resident handle")
    @line_magic
    def unload_model(self, line: str) -> None:
        """Release a model's resident handles (``--all``: every handle in the pool).

        Their memory goes back at once; the handles stay usable and load the
        model again on their next call.
        """
        args = _parse_args(self.unload_model, line)
        if bool(args.name) == bool(args.all):
            raise UsageError("%unload_model: give a model NAME or --all (not both).")
        project = self.project()
        names = sorted({r.name for r in project.loaded()}) if args.all else [args.name]
        counts = {name: project.unload(name) for name in names}
        done = [f"{name} ({n} handles)" if n > 1 else name for name, n in counts.items() if n]
        # A handle inside a call, or held by a stream not yet read to its end, goes when that ends.
        busy = sorted({r.name for r in project.loaded() if r.name in counts and r.in_use})
        if done:
            print(f"released: {', '.join(done)}")
        elif args.name:
            print(f"{args.name} was not resident{_unknown_name_note(project, args.name)}")
        else:
            print("nothing was resident")
        if busy:
            print(
                f"still in use, released when that ends: {', '.join(busy)} (a running call, or a stream "
                "not read to its end: finish it, close() it or del it)"
            )

    # -- %modelfix_cache -------------------------------------------------------

    @magic_arguments()
    @argument(
        "--prune",
        action="store_true",
        help="delete cached files no lockfile entry or cached model needs, and stale partial "
        "downloads; then evict least recently used files down to the cap",
    )
    @argument("--max-size", metavar="SIZE", help="the cap to prune to, e.g. 20GB (default: MODELFIX_CACHE_MAX_SIZE)")
    @argument("--lock", metavar="PATH", help="lockfile whose pinned files pruning keeps (default: as %%load_model)")
    @line_magic
    def modelfix_cache(self, line: str) -> render.Stack:
        """The cache: where it is, how big, what it holds; ``--prune`` frees space."""
        args = _parse_args(self.modelfix_cache, line)
        if args.max_size and not args.prune:
            raise UsageError("%modelfix_cache: --max-size goes with --prune.")
        project = self.project(args.lock)
        if args.max_size:
            project = project.derive(max_size=args.max_size)
        note = _prune(project) if args.prune else ""
        return render.cache_view(project.stats(), project.cache_settings, note)

    # -- lifecycle ---------------------------------------------------------------

    def _handles(self) -> list[Any]:
        return [handle for handle, _, _ in self.handed_out.values()]

    def _on_event(self, event: Any) -> None:
        if event.kind == "evict" and event.source == "pool":  # a handle, not a cached file
            self.released[event.model] = (time.time(), event.message)

    def entry_for(self, handle: Any) -> tuple[Any, Any]:
        """The lockfile entry and lockfile path ``handle`` was loaded from, or (None, None)."""
        _, entry, path = self.handed_out.get(id(handle), (None, None, None))
        return entry, path

    def complete(self, _shell: Any, event: Any) -> list[str]:
        """Tab completion of model names after ``%load_model`` / ``%unload_model``, from the lockfile.

        After a flag that takes a value nothing is offered, so IPython's own completion
        (file names, for ``--lock``) applies. Completion reads the lockfile and nothing else.
        """
        import shlex

        words = event.text_until_cursor.split()
        if event.text_until_cursor[-1:].isspace():
            words.append("")
        magic = next((i for i, word in enumerate(words) if word.lstrip("%") in _COMPLETED), None)
        if magic is None or len(words) < 2 or words[-2] in _VALUED_FLAGS or words[-1].startswith("-"):
            return []
        try:
            lock = words[words.index("--lock") + 1] if "--lock" in words[magic:-1] else None
            names = list(self.project(shlex.split(lock)[0] if lock else None).lockfile.entries)
        except Exception:  # an unfinished line or a broken lockfile: nothing to offer, never an error
            return []
        return [name for name in names if name.startswith(words[-1])]

    def close(self) -> None:
        """Release what these magics handed out and stop listening."""
        self._unsubscribe()
        project = self.project()
        for handle in self._handles():
            project.unload(handle)  # one that is not resident any more counts 0
        self.handed_out.clear()


def _duration(text: str) -> float:
    from modelfix.settings import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"%load_model --keep-alive: {exc}") from None


def _prune(project: Project) -> str:
    """``gc()``, then ``prune()`` to the cap if there is one: what went, in the CLI's words."""
    lines = [project.gc().summary()]
    if math.isinf(project.cache_settings.max_size):
        lines.append("no cap to prune to: pass --max-size or set MODELFIX_CACHE_MAX_SIZE")
        return "\n".join(lines)
    pruned = project.prune()
    lines.append(pruned.summary())
    if note := pruned.note():
        lines.append(note)
    return "\n".join(lines)


# --- %load_ext / %unload_ext ------------------------------------------------------------


def load(shell: Any) -> None:
    """Register everything on ``shell``; loading twice is harmless."""
    if getattr(shell, "_modelfix_magics", None) is not None:
        return
    magics = ModelfixMagics(shell)
    shell.register_magics(magics)
    render.register_formatters(shell, magics.entry_for)
    shell.set_hook("complete_command", magics.complete, re_key=_COMPLETION_KEY)
    errors.install(shell)
    shell._modelfix_magics = magics


def unload(shell: Any) -> None:
    """Release the handles the magics handed out and remove what :func:`load` added."""
    magics = getattr(shell, "_modelfix_magics", None)
    if magics is None:
        return
    try:
        magics.close()
    finally:
        for name in _MAGICS:
            shell.magics_manager.magics["line"].pop(name, None)
        shell.magics_manager.registry.pop(type(magics).__name__, None)
        render.unregister_formatters(shell)
        completers = shell.strdispatchers.get("complete_command")
        if completers is not None:
            completers.regexs.pop(re.compile(_COMPLETION_KEY), None)
        errors.uninstall(shell)
        shell._modelfix_magics = None


def _unknown_name_note(project: Project, name: str) -> str:
    """``; the lockfile has no model 'x' (models: a, b)`` for a likely typo, else nothing."""
    from modelfix.errors import ModelfixError

    try:
        lockfile = project.lockfile
    except ModelfixError:
        return ""
    if name in lockfile.entries:
        return ""
    return f"; {lockfile.path} has no model {name!r} (models: {', '.join(lockfile.entries) or 'none'})"
