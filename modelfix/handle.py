"""What the pool hands out: a hot-swappable stand-in for ``llama_cpp.Llama``.

A :class:`PooledLlama` behaves as the ``Llama`` it wraps (``isinstance(h,
llama_cpp.Llama)`` is true; calls, methods and attributes go through), but the
pool may close the real ``Llama`` behind it to free memory. Its next call
loads it again. A closed ``Llama`` used again crashes the process; a handle
never reaches one::

    user ── h("prompt") ──▶ PooledLlama ── lease ──▶ pool slot ──▶ llama_cpp.Llama
                                                        │           (None when evicted:
                                                        └─ reload ◀─ the lease reloads it)

Each call holds a lease for its duration (a streaming result holds it until
exhausted, closed or dropped), and a leased handle is never evicted.

Also here: building the ``Llama`` from :class:`~modelfix.settings.LoadSettings`
(with llama.cpp's weight repacking on or off, as :mod:`modelfix.probe` decides
for ``repack = "auto"``), keeping llama.cpp's log quiet unless ``verbose``, and
:func:`reset_handle`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import logging
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import ModelfixError, SettingsError

if TYPE_CHECKING:
    import llama_cpp

    from .pool import _Slot
    from .settings import LoadSettings

log = logging.getLogger("modelfix")
__all__ = ["PooledLlama", "build_llama", "open_llama", "reset_handle"]


class Turns:
    """Who may run llama.cpp on one ``Llama`` now: one thread, or one open stream.

    llama.cpp's context is not thread-safe (two threads generating on one
    ``Llama`` abort the process inside ggml) and the pool gives every caller
    of a model the same handle, so threads take turns here:

    * a call holds the turn while it runs; the thread holding it may call
      again (re-entrant: ``tokenize`` inside its own call or stream);
    * a stream holds the turn from its first chunk until it is exhausted or
      closed, for whichever thread iterates it: the turn moves with the stream
      to the thread that asks for its next chunk. Between two chunks another
      completion would overwrite the stream's KV cache, so others wait.

    A turn may be given back from any thread (a stream collected elsewhere),
    which ``threading.RLock`` would not allow. The open stream is held by a weak
    reference: a stream that its reader dropped half-read (``next(it)`` in a
    notebook cell, then ``del it``) must be collected, which gives the turn and the
    lease back; a strong one here kept it, and its model resident, for good. A wait of more than
    ``_PATIENCE`` seconds is logged, naming the model: it is almost always a
    stream that was neither finished nor closed.
    """

    _PATIENCE = 10.0

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._stream: weakref.ref[_LeasedIterator] | None = None  # the open stream holding the turn

    @property
    def stream(self) -> _LeasedIterator | None:
        """The open stream that holds the turn, if any."""
        return None if self._stream is None else self._stream()

    def take(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if not self._cond.wait_for(lambda: self._owner in (None, me), timeout=self._PATIENCE):
                log.warning(
                    "waiting for model %r: another thread's call or an open stream holds it (a stream "
                    "holds its model until it is exhausted or closed)",
                    self.name,
                )
                self._cond.wait_for(lambda: self._owner in (None, me))
            self._owner, self._depth = me, self._depth + 1

    def give_back(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def follow(self, stream: _LeasedIterator) -> None:
        """Before a chunk of ``stream``: take the turn for it, or move its turn to this thread."""
        me = threading.get_ident()
        with self._cond:
            if self._stream is not None and self._stream() is stream:
                if self._owner != me:
                    # Handed to another thread: wait until the old one is not inside a call of its own.
                    self._cond.wait_for(lambda: self._depth == 1)
                    self._owner = me
                return
        self.take()
        with self._cond:
            self._stream = weakref.ref(stream)

    def end(self, stream: _LeasedIterator) -> None:
        """``stream`` is exhausted or closed: its turn, if it holds one, goes back."""
        with self._cond:
            if self._stream is None:
                return
            holder = self._stream()
            # A dead reference is ``stream`` itself: the garbage collector clears weak
            # references to a cycle before it runs the cycle's finalizers.
            if holder is not None and holder is not stream:
                return
            self._stream = None
        self.give_back()


class PooledLlama:
    """A pool handle: use it as the ``llama_cpp.Llama`` it stands for.

    Every method call leases the real ``Llama`` for its duration (reloading it
    first if the pool evicted it); attributes read through to it. Attributes
    you *set* live on the current ``Llama`` and do not survive a reload, and
    raw llama.cpp pointers (``llm.ctx``, ``llm.model``) must not be kept
    across calls: use ``with modelfix.use(handle) as llm:`` for that.
    ``close()`` unloads it (the handle stays usable).
    """

    __slots__ = ("_slot",)

    def __init__(self, slot: _Slot) -> None:
        object.__setattr__(self, "_slot", slot)

    @property  # type: ignore[misc]  # __class__ as a property: what makes isinstance(h, llama_cpp.Llama) true
    def __class__(self) -> type:
        # isinstance() falls back to __class__, so isinstance(h, llama_cpp.Llama) holds.
        import llama_cpp

        return llama_cpp.Llama

    def __getattr__(self, name: str) -> Any:
        import llama_cpp

        slot = slot_of(self)
        static = inspect.getattr_static(llama_cpp.Llama, name, None)
        if isinstance(static, (staticmethod, classmethod)):
            return getattr(llama_cpp.Llama, name)
        if inspect.isfunction(static):
            return functools.partial(_call, slot, name)
        if static is None and name.startswith(("_repr_", "_ipython_")):
            # Display probes (IPython asks for _repr_html_ and a canary name):
            # Llama has none, and answering must not reload an evicted model.
            raise AttributeError(name)
        with slot.pool.lease(slot) as llm:
            return getattr(llm, name)

    def __setattr__(self, name: str, value: Any) -> None:
        slot = slot_of(self)
        with slot.pool.lease(slot) as llm:
            setattr(llm, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call(slot_of(self), "__call__", *args, **kwargs)

    def close(self) -> None:
        """Unload now (after the current call, if one is running); the next call reloads."""
        slot_of(self).pool.unload(self)

    def __dir__(self) -> list[str]:
        import llama_cpp

        return sorted(set(dir(llama_cpp.Llama)) | {"close"})

    def __repr__(self) -> str:
        slot = slot_of(self)
        state = "resident" if slot.llama is not None else "not resident, reloads on use"
        return f"<modelfix handle {slot.name!r} n_ctx={slot.settings.n_ctx} ({state}): {slot.model_path.name}>"


def slot_of(handle: PooledLlama) -> _Slot:
    return object.__getattribute__(handle, "_slot")


def _call(slot: _Slot, name: str, *args: Any, **kwargs: Any) -> Any:
    pool = slot.pool
    slot.turns.take()
    try:
        llm = pool.enter(slot)
        try:
            result = getattr(llm, name)(*args, **kwargs)
        except BaseException:
            pool.release(slot, used=True)
            raise
        if isinstance(result, Iterator):
            # stream=True: llama.cpp works while it is iterated, so the stream takes
            # its own turn at its first chunk; the lease lasts until it ends.
            return _LeasedIterator(slot, result)
        pool.release(slot, used=True)
        return result
    finally:
        slot.turns.give_back()


class _LeasedIterator:
    """Holds the lease of a streaming call until it is exhausted, closed or dropped,
    and the handle's turn from its first chunk (see :class:`Turns`)."""

    def __init__(self, slot: _Slot, inner: Iterator[Any]) -> None:
        self._slot, self._inner, self._held = slot, inner, True

    def __iter__(self) -> _LeasedIterator:
        return self

    def __next__(self) -> Any:
        if not self._held:
            raise StopIteration
        self._slot.turns.follow(self)
        try:
            return next(self._inner)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._held:
            self._held = False
            close = getattr(self._inner, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                self._slot.turns.end(self)
                self._slot.pool.release(self._slot, used=True)

    def __del__(self) -> None:
        self.close()


# llama-cpp-python silences a load (verbose=False) by pointing the process's file
# descriptors 1 and 2 at /dev/null and back with dup2. Two loads overlapping in
# threads restore each other's /dev/null, and the process's output is gone for
# good: loads and closes take turns process-wide.
# Re-entrant: a stream collected by the garbage collector inside a load closes
# its evicted Llama on the thread that holds this lock.
_NATIVE_IO = threading.RLock()


def close_llama(llm: llama_cpp.Llama) -> None:
    with _NATIVE_IO:
        llm.close()


def build_llama(
    name: str, model_path: Path, settings: LoadSettings, mmproj_path: Path | None, *, repack: bool = True
) -> llama_cpp.Llama:
    """A new ``llama_cpp.Llama`` for model ``name`` (split siblings are found beside ``model_path``).

    ``repack`` is the effective weight repacking (``settings.repack`` with
    ``"auto"`` decided by :func:`modelfix.probe.use_repack`).
    """
    _route_llama_logs()
    _check_chat_format(name, settings.chat_format)
    kwargs = settings.llama_kwargs()
    try:
        with _NATIVE_IO:
            if settings.mmproj:
                from llama_cpp import llama_chat_format as formats

                # The generic multimodal handler uses the model's own chat template.
                handler = getattr(formats, "MTMDChatHandler", None) or formats.Llava15ChatHandler
                kwargs["chat_handler"] = handler(clip_model_path=str(mmproj_path), verbose=settings.verbose)
            return open_llama(model_path, kwargs, repack=repack)
    except (ValueError, RuntimeError) as exc:
        raise ModelfixError(
            f"llama.cpp could not load model {name!r} from {model_path}: {exc}. "
            f"Check the files with `modelfix verify --full`, or load with verbose=True to see llama.cpp's log."
        ) from None


def open_llama(model_path: Path, kwargs: dict[str, Any], *, repack: bool = True) -> llama_cpp.Llama:
    """``llama_cpp.Llama(model_path, **kwargs)``, with llama.cpp's weight repacking on or off.

    Repacking is ``llama_model_params.use_extra_bufts``, which ``Llama()`` takes
    no keyword for: it fills the struct from ``llama_model_default_params()``
    and sets only the fields it knows. So while this thread builds its Llama,
    that function (looked up on ``llama_cpp.llama_cpp`` at call time) answers it
    with the field off; other threads still get the default.
    """
    import llama_cpp

    _route_llama_logs()
    with _NATIVE_IO:
        if repack:
            return llama_cpp.Llama(model_path=str(model_path), **kwargs)
        with _without_extra_bufts():
            return llama_cpp.Llama(model_path=str(model_path), **kwargs)


@contextlib.contextmanager
def _without_extra_bufts() -> Iterator[None]:
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    if "use_extra_bufts" not in {name for name, *_ in lib.llama_model_params._fields_}:
        raise SettingsError(
            f"repack = off needs llama_model_params.use_extra_bufts, which llama-cpp-python "
            f"{llama_cpp.__version__} does not have. Upgrade llama-cpp-python, or set repack = on."
        )
    default = lib.llama_model_default_params
    me = threading.get_ident()

    def params() -> Any:
        p = default()
        if threading.get_ident() == me:
            p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = default


def _check_chat_format(name: str, chat_format: str | None) -> None:
    """Refuse an unknown ``chat_format`` at load: llama-cpp-python would accept it and fail at the first chat."""
    if chat_format is None:
        return
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    known = LlamaChatCompletionHandlerRegistry()._chat_handlers
    if chat_format not in known:
        raise SettingsError(
            f"chat_format {chat_format!r} for model {name!r} is not one llama-cpp-python knows. "
            f"Use one of: {', '.join(sorted(known))}; or leave it unset for the model's own template."
        )


@functools.lru_cache(maxsize=1)
def _route_llama_logs() -> Any:
    """Send llama.cpp's log lines to stderr only for verbose handles, else to logging.

    llama-cpp-python's own callback maps ggml's (since renumbered) levels off
    by one, so warnings leak to stderr even with verbose=False. Replaced once
    per process; the returned ctypes callback must stay alive (lru_cache keeps
    it), since llama.cpp holds a raw pointer to it.
    """
    import llama_cpp
    import llama_cpp._logger

    levels = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
    gate = logging.getLogger("llama-cpp-python")  # Llama(verbose=) sets its level
    sink = logging.getLogger("modelfix.llama_cpp")
    sink.addHandler(logging.NullHandler())  # no "last resort" printing to stderr
    last = [logging.DEBUG]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        last[0] = levels.get(level, last[0])  # 5 continues the previous line
        message = text.decode("utf-8", errors="replace")
        if gate.level <= logging.DEBUG:
            print(message, end="", file=sys.stderr, flush=True)
        elif message.strip():
            sink.log(last[0], message.rstrip())

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


def reset_handle(llm: PooledLlama | llama_cpp.Llama, seed: int) -> None:
    """Forget earlier tokens and the KV cache and set the sampling seed.

    After this, a completion depends only on its prompt, its parameters and
    ``seed`` (the pytest ``llama`` fixture calls it before each test). A
    stream left open on the handle (a test that read half of one) is closed
    first: it holds the handle, and its state is what is being forgotten.
    """
    import llama_cpp

    def reset(real: llama_cpp.Llama) -> None:
        real.reset()
        memory = llama_cpp.llama_get_memory(real.ctx)
        if memory:
            # Metadata only: emptied cells are never read before they are written, and zeroing the
            # buffers would cost a memset of the whole KV cache per test (GBs at long contexts).
            llama_cpp.llama_memory_clear(memory, False)
        real.set_seed(seed)

    if type(llm) is PooledLlama:
        slot = slot_of(llm)
        stream = slot.turns.stream
        if stream is not None:
            with contextlib.suppress(ValueError):  # one being read right now finishes its chunk first
                stream.close()
        with slot.pool.lease(slot) as real:  # takes the handle's turn
            reset(real)
    else:
        reset(cast("llama_cpp.Llama", llm))
