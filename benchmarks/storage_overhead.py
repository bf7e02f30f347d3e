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
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial

from tuner.run import runner
from tuner.run import specs as spec_mod

#: (label, file suffix, function name) of the parts of a run the profile breaks out.
PARTS = [
    ("opening the storage", "tuner/store/storage.py", "open_storage"),
    ("creating the studies + their attrs", "tuner/store/storage.py", "create_or_load"),
    ("trials: the workload", "tuner/run/objective.py", "objective"),
    ("trials: storing them (one transaction a block)", "tuner/store/persist.py", "store_trials"),
]


def optuna_store(storage: BaseStorage, study_id: int, trials: list[FrozenTrial],
                 study_system_attrs: dict, holder: object = None) -> list[int]:
    """What runner stored each buffered trial with before tuner/persist.py: Optuna's own
    create_new_trial(template_trial=...), row by row (study attrs, none given here, each in its
    own transaction; no claim check)."""
    tids = [storage.create_new_trial(study_id, template_trial=t) for t in trials]
    for key, value in study_system_attrs.items():
        storage.set_study_system_attr(study_id, key, value)
    return tids


def run_once(spec: spec_mod.Spec, url: str | None, trials: int, before: bool = False
             ) -> tuple[float, float]:
    """(wall, CPU) seconds for ``runner.run`` into ``url`` (None: Optuna's in-memory storage;
    ``before``: Optuna's row-by-row storing and SQLite's default journal, as before)."""
    saved = runner.open_storage, runner.store_trials
    if url is None:
        memory = optuna.storages.InMemoryStorage()
        runner.open_storage = lambda *_: memory  # type: ignore[assignment]
    if before:
        runner.store_trials = optuna_store  # type: ignore[assignment]
        runner.open_storage = lambda u, *_: RDBStorage(  # type: ignore[assignment]
            u, engine_kwargs={"connect_args": {"timeout": 60}})
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        # "sqlite://" (in-memory) only names the lock: one process needs just a thread lock
        runner.run(spec, url or "sqlite://", spec.batch_sizes, trials)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        runner.open_storage, runner.store_trials = saved  # type: ignore[assignment]


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
    ap.add_argument("--before", action="store_true",
                    help="also time the way trials were stored before tuner/persist.py "
                         "(Optuna's create_new_trial, SQLite's default rollback journal)")
    args = ap.parse_args()

    spec = spec_mod.load(args.spec)
    trials = args.trials or spec.trials
    n = trials * len(spec.batch_sizes)
    print(f"{spec.path}: {len(spec.batch_sizes)} batch sizes x {trials} trials = {n} trials, "
          f"optuna {optuna.__version__}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    times: dict[str, list[tuple[float, float]]] = {"sqlite file": [], "in-memory": []}
    if args.before:
        times["sqlite file, before"] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rep in range(args.reps):
            times["sqlite file"].append(
                run_once(spec, f"sqlite:///{Path(tmp) / f'rep{rep}.db'}", trials))
            times["in-memory"].append(run_once(spec, None, trials))
            if args.before:
                times["sqlite file, before"].append(run_once(
                    spec, f"sqlite:///{Path(tmp) / f'before{rep}.db'}", trials, before=True))
            print(f"  rep {rep}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in times.items()),
                  flush=True)
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
