"""What storing trials costs: ``tuner run`` into a fresh SQLite file vs Optuna's in-memory storage.

For a fast workload (default ``studies/nqm_sgd.toml``: 10 batch sizes x 100 trials, each trial a
millisecond or so of closed-form work) the storage is most of a run. In one process, runs the
same spec (seeded: the same trials) into
- a fresh SQLite file (the default kind of storage; in a temp folder next to ``results/``),
- Optuna's ``InMemoryStorage`` (nothing persisted: the floor),
repeating each ``--reps`` times, interleaved, and prints the median wall time of each, the
storage's share per trial, and where the SQLite run's time went (cProfile, cumulative seconds of
the runner's parts).

    .venv/bin/python benchmarks/storage_overhead.py [SPEC] [--reps 3] [--trials N]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from tuner import runner
from tuner import spec as spec_mod

#: (label, file suffix, function name) of the parts of a run the profile breaks out.
PARTS = [
    ("opening the storage", "tuner/storage.py", "open_storage"),
    ("creating the studies + their attrs", "tuner/storage.py", "create_or_load"),
    ("trials: the workload", "tuner/objective.py", "objective"),
    ("trials: storing each (one transaction)", "tuner/persist.py", "store_trial"),
]


def run_once(spec: spec_mod.Spec, url: str | None, trials: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``runner.run`` into ``url`` (None: Optuna's in-memory storage)."""
    if url is None:
        memory = optuna.storages.InMemoryStorage()
        original = runner.open_storage
        runner.open_storage = lambda *_: memory  # type: ignore[assignment]
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        # "sqlite://" (in-memory) only names the lock: one process needs just a thread lock
        runner.run(spec, url or "sqlite://", spec.batch_sizes, trials)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        if url is None:
            runner.open_storage = original  # type: ignore[assignment]


def breakdown(stats: pstats.Stats) -> list[tuple[str, float, int]]:
    """(part, cumulative seconds, calls) for each of PARTS found in the profile."""
    out = []
    for label, suffix, name in PARTS:
        cum, calls = 0.0, 0
        for (file, _, func), (_, ncalls, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
            if func == name and file.endswith(suffix):
                cum, calls = cum + ct, calls + ncalls
        out.append((label, cum, calls))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?", default="studies/nqm_sgd.toml")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--trials", type=int, help="trials per batch size (default: the spec's)")
    ap.add_argument("--dir", help="folder for the SQLite files (default: a temp folder)")
    args = ap.parse_args()

    spec = spec_mod.load(args.spec)
    trials = args.trials or spec.trials
    n = trials * len(spec.batch_sizes)
    print(f"{spec.path}: {len(spec.batch_sizes)} batch sizes x {trials} trials = {n} trials, "
          f"optuna {optuna.__version__}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    times: dict[str, list[tuple[float, float]]] = {"sqlite file": [], "in-memory": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rep in range(args.reps):
            times["sqlite file"].append(
                run_once(spec, f"sqlite:///{Path(tmp) / f'rep{rep}.db'}", trials))
            times["in-memory"].append(run_once(spec, None, trials))
            print(f"  rep {rep}: sqlite {times['sqlite file'][-1][0]:.2f} s, "
                  f"in-memory {times['in-memory'][-1][0]:.2f} s", flush=True)
        prof = cProfile.Profile()
        prof.enable()
        profiled, _ = run_once(spec, f"sqlite:///{Path(tmp) / 'profiled.db'}", trials)
        prof.disable()

    wall = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print()
    print("| storage | median wall s | per trial ms | median CPU s | runs (wall s) |")
    print("|---|---:|---:|---:|---|")
    for k, v in times.items():
        print(f"| {k} | {wall[k]:.2f} | {wall[k] / n * 1e3:.2f} | {cpu[k]:.2f} | "
              f"{', '.join(f'{t:.2f}' for t, _ in v)} |")
    extra = wall["sqlite file"] - wall["in-memory"]
    print(f"\nstorage overhead: {extra / n * 1e3:.2f} ms per trial ({extra:.2f} s for {n} "
          f"trials; CPU {(cpu['sqlite file'] - cpu['in-memory']) / n * 1e3:.2f} ms per trial)")
    print(f"\nwhere a SQLite run's time goes (cProfile, {profiled:.2f} s with the profiler on):")
    print("| part | cumulative s | calls |")
    print("|---|---:|---:|")
    parts = breakdown(pstats.Stats(prof))
    for label, cum, calls in parts:
        print(f"| {label} | {cum:.2f} | {calls} |")
    rest = profiled - sum(cum for _, cum, _ in parts)
    print(f"| the rest (sampler, Optuna's in-memory study, reading the summary) | {rest:.2f} | |")


if __name__ == "__main__":
    main()
