"""``tuner run --workers N``: each worker with a thread per core (as before) vs CPUs / N threads.

Until 2026-12-07 every worker's torch started one intra-op thread per core, so N workers on C
cores ran N x C threads; now the launcher gives each ``OMP_NUM_THREADS`` = C / N (at least 1)
unless the user set it. This times whole ``tuner run --workers N`` processes of a Fashion-MNIST
MLP spec whose trials run their whole (cut) budget, into fresh SQLite files, the two settings
interleaved ``--reps`` times, and prints the median wall time, the median stored
``step_seconds`` (steady-state seconds per training step) and the ratios; then checks that both
settings stored the same trials (slot by slot: params, outcome, stopped step).

    .venv/bin/python benchmarks/worker_threads.py [--workers 2] [--reps 3] [--trials 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from tuner.run import workers as workers_mod

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "studies" / "fashion_mnist_mlp.toml").read_text()
# every trial runs 200 steps (a target it cannot reach), evaluated every 50: the trial phase is
# training, as in a real study's trials
CUT = (SPEC.replace("value = 0.12", "value = 0.001")
       .replace("max_epochs = 30\nmin_steps = 500", "max_steps = 200")
       .replace("first_step = 20", "first_step = 50")
       .replace("min_interval = 20", "min_interval = 50")
       .replace("relative = 0.02", "relative = 0.5"))


def run(spec: Path, db: Path, workers: int, trials: int, b: int, threads: str | None) -> float:
    """Wall seconds of one whole ``tuner run --workers``; OMP_NUM_THREADS ``threads`` or unset."""
    env = {k: v for k, v in os.environ.items() if k not in workers_mod.THREAD_VARS}
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(spec), "--storage",
                    f"sqlite:///{db}", "--workers", str(workers), "--trials", str(trials),
                    "-b", str(b), "-q", "--no-summary", "--no-preflight"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def stored(db: Path) -> tuple[float, dict[int, tuple]]:
    """Median step_seconds of the stored trials, and slot -> (params, outcome, stopped step)."""
    storage = f"sqlite:///{db}"
    [s] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
    steps = [t.user_attrs["step_seconds"] for t in trials if t.user_attrs.get("step_seconds")]
    return statistics.median(steps), {
        t.user_attrs["slot"]: (t.params, t.user_attrs["outcome"], t.user_attrs["stopped_at_step"])
        for t in trials}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    cpus = workers_mod.cpus()
    settings = {f"OMP_NUM_THREADS={cpus} each (a thread per core, before)": str(cpus),
                f"default: {max(1, cpus // args.workers)} each (CPUs / workers)": None}
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.2f}; --workers {args.workers}, "
          f"{args.trials} trials of 200 steps at B = {args.batch_size}; median of {args.reps}")
    walls: dict[str, list[float]] = {k: [] for k in settings}
    steps: dict[str, list[float]] = {k: [] for k in settings}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "fmnist_mlp_cut.toml"
        spec.write_text(CUT)
        for rep in range(args.reps):
            for name, threads in settings.items():
                db = Path(tmp) / f"{rep}_{threads}.db"
                walls[name].append(run(spec, db, args.workers, args.trials, args.batch_size,
                                       threads))
                step, res = stored(db)
                steps[name].append(step)
                results.append(res)
    print("| workers' threads | whole run s (runs) | step ms (median of stored step_seconds) |")
    print("|---|---:|---:|")
    for name in settings:
        print(f"| {name} | {statistics.median(walls[name]):.1f} "
              f"({', '.join(f'{w:.1f}' for w in walls[name])}) | "
              f"{1e3 * statistics.median(steps[name]):.2f} |")
    old, new = settings
    wall = statistics.median(walls[old]) / statistics.median(walls[new])
    step = statistics.median(steps[old]) / statistics.median(steps[new])
    print(f"before / default: whole run {wall:.2f}x, step {step:.2f}x")
    same = all(r == results[0] for r in results)
    print("same trials in every run (params, outcome, stopped step):", same)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
