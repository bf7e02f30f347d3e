"""Analysis commands on 10,000 (and 100,000) stored trials: whole processes, side by side.

Builds ``studies/nqm_sgd.toml`` with ``tuner run --trials N`` (10 batch sizes, so 10 N trials)
into a SQLite file (and, with ``--postgres``, a PostgreSQL database on a server that
``scripts/postgres.sh`` starts), then times ``tuner curve``, ``edges``, ``sensitivity`` and
``report --no-dashboard`` as whole processes (start-up included), median of ``--reps``, and
their peak memory. The baseline, in the same run and interleaved: the same commands reading the
trials through Optuna's API (``$TUNER_READER=optuna``: ``RDBStorage.get_all_trials``, what
analysis did before). A last row times a process that only imports what ``curve`` needs
(``tuner.cli``, ``scipy.optimize``) and exits as ``tuner`` does: the floor under every command.

    .venv/bin/python benchmarks/analysis_speed.py [--trials 1000] [--reps 3] [--postgres]
        [--no-baseline] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = "studies/nqm_sgd.toml"
COMMANDS = [["curve"], ["edges"], ["sensitivity"], ["report", "--no-dashboard", "--out"]]
TUNER = [sys.executable, "-c", "from tuner.cli import main; main()"]
#: Imports what ``curve`` needs and ends as ``tuner`` ends (its at-exit handler).
FLOOR = ("import atexit, scipy.optimize, tuner.cli\n"
         "atexit.register(tuner.cli._before_teardown)")


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode() if p.stderr else ""
    if code not in (0, 1, 3):
        raise SystemExit(f"{' '.join(args[3:])}: exit {code}: {err[-500:]}")
    return wall, usage.ru_maxrss / 1024


def build(url: str, trials: int) -> float:
    """Seconds to store 10 x ``trials`` NQM trials into ``url``."""
    t0 = time.perf_counter()
    subprocess.run([*TUNER, "run", SPEC, "--trials", str(trials), "--storage", url, "-q",
                    "--no-summary"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bench(url: str, label: str, reps: int, baseline: bool, out: Path) -> None:
    """One table row per command."""
    for cmd in COMMANDS:
        args = [*TUNER, cmd[0], SPEC, "--storage", url, *cmd[1:]]
        if cmd[-1] == "--out":
            args.append(str(out / "report"))
        ours, base, rss, rss_base = [], [], [], []
        for _ in range(reps):  # interleaved: both see the same machine
            w, m = timed(args, dict(os.environ, TUNER_READER="sql"))
            ours.append(w)
            rss.append(m)
            if baseline:
                w, m = timed(args, dict(os.environ, TUNER_READER="optuna"))
                base.append(w)
                rss_base.append(m)
        o = statistics.median(ours)
        b = statistics.median(base) if base else None
        print(f"| {label} | `{cmd[0]}` | {o:.2f} | "
              + (f"{b:.2f} | {b / o:.1f}x | " if b else "- | - | ")
              + f"{max(rss):.0f}" + (f" ({max(rss_base):.0f})" if rss_base else "") + " |",
              flush=True)


def floor(reps: int) -> float:
    """Median seconds of a process that imports what ``curve`` needs and does nothing."""
    return statistics.median(
        timed([sys.executable, "-c", FLOOR], dict(os.environ))[0]
        for _ in range(reps))


def postgres(folder: Path) -> str:
    """A PostgreSQL server started by scripts/postgres.sh; its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run(["bash", "scripts/postgres.sh", "start", str(folder), str(port)],
                       capture_output=True, text=True, check=True)
    return p.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000, help="trials per batch size")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep (and reuse) the SQLite storage here")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="tuner-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    n = 10 * args.trials
    print(f"load average {os.getloadavg()[0]:.2f}; {n:,} trials; median of {args.reps}")
    print("| storage | command | ours s | Optuna API s | speed-up | peak MB (Optuna API) |")
    print("|---|---|---:|---:|---:|---:|")
    pg_folder = None
    try:
        db = folder / f"nqm_{n}.db"
        url = f"sqlite:///{db}"
        if not db.exists():
            print(f"(built {n:,} trials into SQLite in {build(url, args.trials):.0f} s)")
        bench(url, f"SQLite {n:,}", args.reps, not args.no_baseline, folder)
        if args.postgres:
            pg_folder = Path(tempfile.mkdtemp(prefix="tuner-bench-pg-"))
            base = postgres(pg_folder)
            print(f"(built {n:,} trials into PostgreSQL in {build(base, args.trials):.0f} s)")
            bench(base, f"PostgreSQL {n:,}", args.reps, not args.no_baseline, folder)
        print(f"| - | `import tuner.cli, scipy.optimize`, exiting as `tuner` does (floor) | "
              f"{floor(args.reps):.2f} | "
              "| | |")
    finally:
        if pg_folder is not None:
            subprocess.run(["bash", "scripts/postgres.sh", "stop", str(pg_folder)],
                           capture_output=True)
            shutil.rmtree(pg_folder, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
