"""Run a notebook headless in a real kernel: ``python -m modelfix_jupyter.run NOTEBOOK``.

What the demo uses to execute ``jupyter_ext/example.ipynb``, and what the
tests use to check the magics in a real ipykernel. The kernel is the
``python3`` kernelspec, which jupyter_client starts with this interpreter
(``sys.executable``), so it sees the same installed packages; it inherits the
environment (``HF_ENDPOINT``, ``MODELFIX_CACHE_DIR``, ``MODELFIX_LOCK``...).
Widget state is kept in ``nb.metadata.widgets``, so the executed notebook
shows its progress bars when rendered later.

The printed text is what a front end would show: each cell's outputs,
widgets in their final state, and what IPython sends to the pager (``%load_model?``,
``obj??``), which a kernel returns beside the outputs rather than in them.
A failing cell stops the run (exit 1) unless ``--allow-errors``: then every cell
runs, each failure is named, and the run exits 0, as ``jupyter nbconvert
--allow-errors`` does.

It needs nbformat, nbclient and ipykernel, which the magics do not: the ``run`` extra
(``pip install 'modelfix-jupyter[run]'``). Without them it says so in one line.

Kernel and client talk over IPC (Unix sockets in a private temporary
folder) where the platform has it: nothing listens on a TCP port, and the
kernel has no reason to warn that its TCP traffic is unencrypted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from modelfix.errors import _NotebookPackageMissing

__all__ = ["run_notebook", "main", "RUNNER_PACKAGES"]

# What running a notebook needs beyond the magics: modelfix-jupyter's `run` extra.
RUNNER_PACKAGES = ("nbformat", "nbclient", "ipykernel")


def _require_runner() -> None:
    missing = [name for name in RUNNER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise _NotebookPackageMissing(
            f"running a notebook headless needs {', '.join(missing)}, which modelfix-jupyter's magics do not: "
            "`pip install 'modelfix-jupyter[run]'` (or `pip install nbformat nbclient ipykernel`)"
        )


def run_notebook(
    path: str | os.PathLike[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    timeout: int = 300,
    output: str | os.PathLike[str] | None = None,
    allow_errors: bool = False,
) -> Any:
    """Execute every cell of ``path`` in a fresh kernel; return the executed notebook.

    Runs in ``cwd`` (default: the current folder). A failing cell raises
    ``nbclient.exceptions.CellExecutionError``, unless ``allow_errors``: then every
    cell runs and the errors stay in the cells' outputs. ``output`` saves the executed
    notebook (with widget state) there, also when a cell failed: that is when
    it is most wanted.
    """
    nb, error, _, _ = _execute(path, cwd=cwd, timeout=timeout, output=output, allow_errors=allow_errors)
    if error is not None:
        raise error
    return nb


def _execute(
    path: str | os.PathLike[str],
    *,
    cwd: str | os.PathLike[str] | None,
    timeout: int,
    output: str | os.PathLike[str] | None,
    allow_errors: bool = False,
) -> tuple[Any, Exception | None, dict[int, str], int | None]:
    """(the notebook as far as it ran, the error that stopped it or None, pager text per cell index,
    the index of the last cell that started).

    The error: a cell's (CellExecutionError), or the kernel's (a cell's timeout, a dead kernel):
    then the last cell that started is the one it stopped in.
    """
    _require_runner()
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from traitlets.config import Config

    nb = nbformat.read(os.fspath(path), as_version=4)
    error = None
    pages: dict[int, str] = {}
    started: list[int] = []

    def keep_pages(cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        for payload in execute_reply.get("content", {}).get("payload", []):
            if payload.get("source") == "page":
                text = payload.get("data", {}).get("text/plain", "")
                pages[cell_index] = pages.get(cell_index, "") + _ANSI.sub("", text)

    _Client = _client_class()
    with tempfile.TemporaryDirectory(prefix="modelfix-kernel-") as sockets:
        # An absolute socket prefix: a relative one would be resolved against the
        # kernel's working folder by the kernel and against ours by the client.
        ipc = {"transport": "ipc", "ip": os.path.join(sockets, "kernel")} if os.name == "posix" else {}
        client = _Client(
            nb,
            kernel_name="python3",
            timeout=timeout,
            resources={"metadata": {"path": os.fspath(cwd or Path.cwd())}},
            store_widget_state=True,
            allow_errors=allow_errors,
            on_cell_execute=lambda cell, cell_index: started.append(cell_index),
            on_cell_executed=keep_pages,
            config=Config({"KernelManager": ipc}),
        )
        try:
            client.execute()
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            error = exc
            client.set_widgets_metadata()  # nbclient stores widget state only after a clean run
    if output is not None:
        nbformat.write(nb, os.fspath(output))
    return nb, error, pages, (started[-1] if started else None)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the pager's colours


def _client_class() -> type:
    from nbclient import NotebookClient

    class Client(NotebookClient):
        """nbclient's client, which stops a timed-out kernel at once rather than asking it to shut down.

        The kernel is still running the cell: asked to shut down, it answers the cell on a socket
        already closed and ipykernel prints a 20-line ZMQError traceback into the run's output.
        """

        async def _async_handle_timeout(self, timeout: int, cell: Any = None) -> Any:
            self.shutdown_kernel = "immediate"
            return await super()._async_handle_timeout(timeout, cell)

    return Client


def _text_of(output: Any, widgets: dict[str, Any]) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return f"{output.get('ename')}: {output.get('evalue')}\n"
    data = output.get("data", {})
    view = data.get("application/vnd.jupyter.widget-view+json")
    text = _widget_text(view["model_id"], widgets) if view and view.get("model_id") in widgets else ""
    text = text or data.get("text/plain", "")
    return text + "\n" if text else ""


def _widget_text(model_id: str, widgets: dict[str, Any]) -> str:
    """A widget's final state as text: boxes as lines (VBox) or columns (HBox), labels and HTML as words."""
    import html
    import re

    model = widgets.get(model_id.removeprefix("IPY_MODEL_"), {})
    state = model.get("state", {})
    children = [_widget_text(child, widgets) for child in state.get("children", [])]
    if model.get("model_name") == "VBoxModel":
        return "\n".join(children)
    if model.get("model_name") == "HBoxModel":
        return "  ".join(children)
    if model.get("model_name") == "HTMLModel":
        return html.unescape(re.sub(r"<[^>]+>", "", state.get("value", "")))
    return state.get("description", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelfix_jupyter.run", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", help="the .ipynb file to run")
    parser.add_argument("--output", metavar="PATH", help="save the executed notebook here")
    parser.add_argument("--timeout", type=int, default=300, metavar="S", help="seconds per cell (default 300)")
    parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="run every cell even after one fails; name each failure on stderr and exit 0",
    )
    args = parser.parse_args(argv)
    try:
        _require_runner()
    except _NotebookPackageMissing as exc:
        parser.error(str(exc))
    import nbformat

    try:  # a missing or malformed file is a usage error, not nbformat's traceback
        nbformat.read(args.notebook, as_version=4)
    except OSError as exc:
        parser.error(f"cannot read {args.notebook}: {exc.strerror or exc}")
    except ValueError as exc:  # nbformat's NotJSONError and friends
        parser.error(f"{args.notebook} is not a notebook ({exc}); give the path of an .ipynb file")
    nb, error, pages, running = _execute(
        args.notebook, cwd=None, timeout=args.timeout, output=args.output, allow_errors=args.allow_errors
    )
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    code = [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    stopped = _stopped(error, args.timeout) if error is not None else None  # by the kernel, not by a cell's error
    failures = []
    for number, (index, cell) in enumerate(code, 1):
        halted_here = stopped is not None and index == running
        if cell.get("execution_count") is None and not cell.get("outputs") and not halted_here:
            break  # not reached: an earlier cell failed
        print(f"In [{cell.get('execution_count') or ' '}]: {cell.source}")
        for output in cell.get("outputs", []):
            sys.stdout.write(_text_of(output, widgets))
            # A timed-out cell's KeyboardInterrupt is the runner's doing: that cell is named below.
            expected = halted_here or "raises-exception" in cell.metadata.get("tags", ())
            if output.get("output_type") == "error" and not expected:
                failures.append(
                    f"code cell {number} of {len(code)} failed: {output.get('ename')}: {output.get('evalue')}"
                )
        if index in pages:
            sys.stdout.write(pages[index].rstrip("\n") + "\n")
        if halted_here:
            failures.append(f"code cell {number} of {len(code)} {stopped}")
    for failure in failures:
        print(f"{args.notebook}: {failure}", file=sys.stderr)
    if error is not None:
        if not failures:  # neither a cell's error nor a cell the kernel stopped in names it
            print(f"{args.notebook}: {type(error).__name__}: {str(error).strip()}", file=sys.stderr)
        return 1
    allowed = f", {len(failures)} failed (--allow-errors)" if failures else ""
    print(f"{args.notebook}: {len(code)} cells executed{allowed}")
    return 0


def _stopped(error: Exception, timeout: int) -> str | None:
    """What stopped the run in the middle of a cell: a timeout or a dead kernel (None: a cell's own error)."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if isinstance(error, CellTimeoutError):
        return f"timed out: it ran longer than {timeout} s (raise --timeout)"
    if isinstance(error, DeadKernelError):
        return "killed the kernel: its process ended during the cell (a crash in native code, os._exit, out of memory)"
    return None


if __name__ == "__main__":
    sys.exit(main())
