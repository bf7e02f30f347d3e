"""The process's teardown, side by side: ``tuner`` as shipped against the same command with
``tuner.cli``'s at-exit ``gc.collect(); gc.freeze()`` handler taken off.

Each repetition runs the command once each way, alternating (both see the same machine),
as whole processes (start-up and teardown included), and checks that both print the same.
Prints per storage the median wall seconds each way, their ratio and the paired median
difference.

    .venv/bin/python benchmarks/teardown.py --storage sqlite:///DIR/nqm_10000.db \\
        [--storage postgresql+psycopg://...] [--spec studies/nqm_sgd.toml] [--reps 15] \\
        [-- curve]

The 10,000-trial storages come from ``benchmarks/analysis_speed.py --keep DIR [--postgres]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SHIPPED = "from tuner.cli import main; main()"
#: The same entry point with the handler unregistered after main() registered it.
WITHOUT = ("import atexit\nfrom tuner import cli\ntry:\n    cli.main()\n"
           "finally:\n    atexit.unregister(cli._before_teardown)")


def timed(code: str, args: list[str]) -> tuple[float, bytes]:
    """Wall seconds and stdout of one ``python -c CODE ARGS`` process."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.decode()[-500:]}")
    return wall, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--storage", action="append", required=True, help="storage URL (repeat)")
    ap.add_argument("--spec", default="studies/nqm_sgd.toml")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("command", nargs="*", default=["curve"], help="tuner command (curve)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; `tuner {' '.join(args.command)} "
          f"{args.spec}`; median of {args.reps}, alternating")
    print("| storage | shipped s | without the handler s | ratio | paired difference s |")
    print("|---|---:|---:|---:|---:|")
    for url in args.storage:
        cmd = [*args.command, args.spec, "--storage", url]
        ours, base = [], []
        for i in range(args.reps):
            pair = [(SHIPPED, ours), (WITHOUT, base)]
            for code, into in pair if i % 2 == 0 else pair[::-1]:
                wall, out = timed(code, cmd)
                into.append((wall, out))
            if ours[-1][1] != base[-1][1]:
                raise SystemExit(f"{url}: the two processes printed different output")
        o = statistics.median(w for w, _ in ours)
        b = statistics.median(w for w, _ in base)
        d = statistics.median(y[0] - x[0] for x, y in zip(ours, base))
        print(f"| {url.split(':')[0]} | {o:.2f} | {b:.2f} | {b / o:.2f}x | {d:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
