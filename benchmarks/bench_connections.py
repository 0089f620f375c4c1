"""How many connections for one large file: the same 1 GiB download in 1, 2, 4 and 8 byte ranges at once.

Each run is a fresh process calling :func:`modelfix.fetch.download` on the file's resolve URL
(302 to the hub's CDN port), sha256 and xxh3 computed on the way, into a fresh folder. A run
with N connections starts from an empty partial and a ranges journal of N equal ranges, which
is how a download resumes, so all N streams run from the first byte (a live download splits
only once its single stream proves slow). The counts alternate, ``--rounds`` times; the median
is reported, with the ratio to one connection.

Over loopback nothing throttles a connection: this measures what more streams cost or save
when the client's cores, not the link, are the limit. On a link that caps each connection
(a CDN), more ranges pay off; that is not measured here.

    python benchmarks/bench_connections.py [--rounds 3] [--counts 1,2,4,8]
"""

from __future__ import annotations

import argparse
import hashlib
import json

from _common import PYTHON, Hub, Summary, big_file, clean_env, load, machine, ratio, run_child, scratch, table

CHILD = """
import json, os, time
from pathlib import Path
from modelfix.fetch import FetchPolicy, download
from modelfix.jobs import new_job
from modelfix.transports import HttpTransport
size, count, folder = {size}, {count}, Path({folder!r})
partial = folder / "blob.partial"
partial.touch()
if count > 1:
    cuts = [size * i // count for i in range(count + 1)]
    ranges = [[a, b, 0] for a, b in zip(cuts, cuts[1:])]
    (folder / "blob.partial.ranges").write_text(json.dumps({{"size": size, "ranges": ranges}}))
policy = FetchPolicy(connections=count)
started = time.perf_counter()
result = download(HttpTransport({url!r}, policy=policy), partial, size, job=new_job("bench", "big", size),
                  label="bench", policy=policy)
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "sha256": result.sha256}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per count (default: 3)")
    parser.add_argument("--counts", default="1,2,4,8", help="connection counts (default: 1,2,4,8)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(machine(), flush=True)
    big = big_file()
    size = big.stat().st_size
    with open(big, "rb") as f:
        expected = hashlib.file_digest(f, "sha256").hexdigest()
    times: dict[int, list[float]] = {c: [] for c in counts}
    with Hub({"bench/big": big.parent}) as hub:
        url = f"{hub.endpoint}/bench/big/resolve/main/{big.name}"
        for round_ in range(args.rounds):
            for count in counts if round_ % 2 == 0 else counts[::-1]:
                with scratch("connections-") as folder:
                    code = CHILD.format(size=size, count=count, folder=str(folder), url=url)
                    out = run_child([PYTHON, "-c", code], clean_env()).output
                if out["sha256"] != expected:
                    raise SystemExit(f"{count} connections: sha256 {out['sha256']}, expected {expected}")
                times[count].append(out["seconds"])
                print(f"  round {round_ + 1}: {count} connections {out['seconds']:.2f} s", flush=True)
    first = Summary.of(times[counts[0]]).median
    rows = []
    for count in counts:
        t = Summary.of(times[count])
        rows.append(
            (
                count,
                f"{t.median:.2f} s ({t.low:.2f}–{t.high:.2f})",
                f"{size / t.median / 1e9:.2f} GB/s",
                ratio(first, t.median),
            )
        )
    print(f"\none {size / 2**30:.0f} GiB file, sha256 checked, median of {args.rounds} runs per count")
    table(("connections", "fetch time (range)", "throughput", f"throughput / {counts[0]} connection(s)"), rows)
    print(json.dumps({"medians": {c: Summary.of(v).median for c, v in times.items()}}))
    print(load())


if __name__ == "__main__":
    main()
