"""Take the screenshots of docs/notebook.md from a real JupyterLab page (a maintainer's script).

    python jupyter_ext/screenshots.py --jupyter-lab /tmp/jlab/bin/jupyter-lab [--out docs/img]

Serves the demo model from a :class:`~modelfix.testing.hub.LocalHub` as the
demo does (``modelfix-demo/tiny-GGUF``, the repository's ``model-lock.toml``),
with a fresh cache so the progress bars show a real download. Starts the
given JupyterLab (any environment with ``jupyterlab`` and ``ipywidgets``;
its kernel is this interpreter, which has modelfix and modelfix-jupyter),
opens ``jupyter_ext/example.ipynb`` in headless Chromium, runs every cell,
then photographs two cells::

    load_model.png   llm = %load_model tiny / llm: the progress widget, then the handle
    models.png       %models: the table

Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages ending in NUL on fds 3 and 4),
so nothing but this script, JupyterLab and Chromium is needed. Not shipped
with the package.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PORT, TOKEN = 8899, "screenshots"
WIDTH, HEIGHT = 1100, 900
# The notebook panel and its cells, through the app object JupyterLab exposes
# with --LabApp.expose_app_in_browser (headless Chromium has no focus, so the
# shell's "current widget" stays empty: look the notebook up instead).
NOTEBOOK = "Array.from(jupyterapp.shell.widgets('main')).find(w => w.sessionContext)"
CELLS = f"{NOTEBOOK}.content.widgets"


class Browser:
    """Headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()
        argv = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ]
        # Chromium reads commands on fd 3 and answers on fd 4: the shell puts the pipes there.
        command = f"exec {shlex.join(argv)} 3<&{to_chrome} 4>&{from_chrome}"
        self.process = subprocess.Popen(
            ["sh", "-c", command],
            pass_fds=(to_chrome, from_chrome),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._ids, self._buffer, self.session = 0, b"", None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                self._buffer += os.read(self._read, 1 << 20)
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._ids:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"JupyterLab never got there: {expression}")
            time.sleep(0.25)

    def shoot_cell(self, index: int, path: Path, pad: int = 6) -> None:
        self.js(f"{CELLS}[{index}].node.scrollIntoView({{block: 'center'}})")
        time.sleep(0.8)  # let the scroll settle and widgets lay out
        r = self.js(
            f"(() => {{ const r = {CELLS}[{index}].node.getBoundingClientRect();"
            " return {x: r.x, y: r.y, w: r.width, h: r.height}; })()"
        )
        # No padding below: the next cell's border would show there.
        clip = {"x": r["x"] - pad, "y": r["y"] - pad, "width": r["w"] + 2 * pad, "height": r["h"] + pad, "scale": 1}
        shot = self.send("Page.captureScreenshot", format="png", clip=clip)
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"saved {path}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _lab_home(home: Path) -> dict[str, str]:
    """Jupyter folders of its own: a kernelspec for this interpreter, no news pop-up."""
    spec = home / "data" / "kernels" / "modelfix"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (modelfix)",
                "language": "python",
            }
        )
    )
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    notebook = json.loads((ROOT / "jupyter_ext" / "example.ipynb").read_text())
    notebook["metadata"]["kernelspec"] = {
        "name": "modelfix",
        "display_name": "Python 3 (modelfix)",
        "language": "python",
    }
    (home / "notebooks").mkdir()
    (home / "notebooks" / "example.ipynb").write_text(json.dumps(notebook))
    return {
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }


def take(jupyter_lab: str, chromium: str, out: Path, home: Path) -> None:
    from modelfix.testing.demo import DEMO_REPO
    from modelfix.testing.gguf import tiny_repo_files
    from modelfix.testing.hub import LocalHub

    files = tiny_repo_files(home / "repo", tags=("Q4_0", "Q8_0"), split_tags=("Q4_1",), split_parts=3)
    with LocalHub() as hub:
        hub.create_repo(DEMO_REPO)
        hub.commit(DEMO_REPO, dict(files), message="tiny demo model")
        env = {
            **os.environ,
            **_lab_home(home),
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "MODELFIX_CACHE_DIR": str(home / "cache"),
            "MODELFIX_LOCK": str(ROOT / "model-lock.toml"),
        }
        env.pop("HF_TOKEN", None)
        with open(home / "lab.log", "w") as log:
            lab = subprocess.Popen(
                [
                    jupyter_lab,
                    "--no-browser",
                    "--allow-root",
                    "--ip=127.0.0.1",
                    f"--port={PORT}",
                    f"--IdentityProvider.token={TOKEN}",
                    "--LabApp.expose_app_in_browser=True",
                    f"--ServerApp.root_dir={home / 'notebooks'}",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        browser = None
        try:
            _wait_for_server()
            browser = Browser(chromium, home / "chrome")
            browser.send("Emulation.setFocusEmulationEnabled", enabled=True)
            browser.send(
                "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=2, mobile=False
            )
            browser.send("Page.navigate", url=f"http://127.0.0.1:{PORT}/lab/tree/example.ipynb?token={TOKEN}")
            browser.wait(
                f"(() => {{ const nb = window.jupyterapp && {NOTEBOOK};"
                " const k = nb && nb.sessionContext.session && nb.sessionContext.session.kernel;"
                " return !!(k && k.status === 'idle'); })()"
            )
            browser.js(
                f"jupyterapp.shell.activateById({NOTEBOOK}.id); jupyterapp.shell.collapseLeft();"
                " jupyterapp.shell.collapseRight()"
            )
            browser.js("jupyterapp.commands.execute('notebook:run-all-cells'), true")
            browser.wait(
                f"{CELLS}.every(c => c.model.type !== 'code' || (c.model.executionCount"
                " && !c.node.innerText.includes('[*]')))"
            )
            time.sleep(2)  # the last comm messages reach the widgets
            find = f"(s => {CELLS}.findIndex(c => c.model.sharedModel.getSource().startsWith(s)))"
            browser.shoot_cell(browser.js(f"{find}('llm = %load_model tiny')"), out / "load_model.png")
            browser.shoot_cell(browser.js(f"{find}('%models')"), out / "models.png")
        finally:
            if browser is not None:
                browser.close()
            lab.terminate()
            lab.wait(20)


def _wait_for_server(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/api/status?token={TOKEN}", timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jupyter-lab",
        required=True,
        metavar="PATH",
        help="the jupyter-lab executable of an environment with jupyterlab and ipywidgets",
    )
    parser.add_argument("--chromium", default="chromium", metavar="PATH")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"), metavar="DIR")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelfix-screenshots-") as home:
        take(args.jupyter_lab, args.chromium, Path(args.out), Path(home))
    return 0


if __name__ == "__main__":
    sys.exit(main())
