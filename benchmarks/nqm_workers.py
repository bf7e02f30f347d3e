"""Do two buffered workers share a fast study? ``tuner run SPEC --workers 1`` vs ``--workers W``.

Times whole ``tuner run`` processes (start-up, every worker, the summary table) into fresh SQLite
files, the two worker counts interleaved, ``--reps`` times each, and prints the median wall time
of each and the ratio. Then checks that every storage holds the same results: the ``tuner
curve --format json`` points (less the fields that differ by design: which trial number was
best and how long it took) and, per batch size, each slot's params, value, seed and outcome.

Besides the whole processes it splits each run, from the storage's trial times: *start-up*
(the command's start to the first trial: imports, checks, opening the studies; with ``--workers``
the launcher's and then its workers'), the *trial phase* (first trial's start to last trial's
end: where the workers share the studies) and *after* (the summary table, processes ending),
and the CPU seconds of all its processes (less disturbed than wall times by other jobs).

    .venv/bin/python benchmarks/nqm_workers.py [SPEC] [--workers 2] [--reps 3]

Default SPEC: ``studies/nqm_sgd.toml`` (10 batch sizes x 100 NQM trials, milliseconds each:
the buffered path, trials run in memory and stored whole).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Curve point fields that depend on who ran which trial when, not on the results.
NOT_RESULTS = ("best_trial", "best_wall_seconds")


def tuner(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)


def cpu_of_children() -> float:
    """CPU seconds (user + system) of this process's waited-for descendants so far."""
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def timed_run(spec: str, url: str, workers: int
              ) -> tuple[float, float, dt.datetime, dt.datetime]:
    """Wall and CPU seconds of ``tuner run SPEC --workers N -q`` into ``url`` (its workers
    included), and when it started and ended (local clock, as the trials' times)."""
    started, t0, c0 = dt.datetime.now(), time.perf_counter(), cpu_of_children()
    r = tuner("run", spec, "--storage", url, "--workers", str(workers), "-q")
    wall, cpu = time.perf_counter() - t0, cpu_of_children() - c0
    if r.returncode != 0:
        raise SystemExit(f"tuner run --workers {workers} failed ({r.returncode}):\n"
                         f"{r.stderr[-3000:]}")
    return wall, cpu, started, started + dt.timedelta(seconds=wall)


def curve_points(spec: str, url: str) -> list[dict]:
    """``tuner curve --format json`` points, less :data:`NOT_RESULTS`."""
    r = tuner("curve", spec, "--storage", url, "--format", "json", "--n-boot", "0")
    if r.returncode != 0:
        raise SystemExit(f"tuner curve failed ({r.returncode}):\n{r.stderr[-3000:]}")
    # the advice's command names the storage, which differs run by run
    return [{k: json.loads(json.dumps(v, ensure_ascii=False).replace(url, "URL"))
             for k, v in p.items() if k not in NOT_RESULTS}
            for p in json.loads(r.stdout)["points"]]


def slot_results(url: str) -> dict[int, dict[int, tuple]]:
    """batch size -> slot -> (params, value, seed, outcome, steps) of its finished trial;
    also checks that each study has one finished trial per slot and nothing unfinished."""
    import optuna
    from optuna.trial import TrialState

    out: dict[int, dict[int, tuple]] = {}
    for s in optuna.get_all_study_summaries(url):
        trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        slots = [t.user_attrs["slot"] for t in done]
        assert len(slots) == len(set(slots)), f"{s.study_name}: a slot finished twice"
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        out[s.user_attrs["batch_size"]] = {
            t.user_attrs["slot"]: (sorted(t.params.items()), t.value, t.user_attrs["seed"],
                                   t.user_attrs["outcome"], t.user_attrs["stopped_at_step"])
            for t in done}
    return out


def trial_phase(url: str) -> tuple[dt.datetime, dt.datetime]:
    """The first trial's start and the last trial's end (the storage's times)."""
    import optuna

    starts, ends = [], []
    for s in optuna.get_all_study_summaries(url):
        for t in optuna.load_study(study_name=s.study_name, storage=url).get_trials():
            starts.append(t.datetime_start)
            ends.append(t.datetime_complete)
    return min(starts), max(ends)


def workers_of(url: str) -> dict[int, int]:
    """batch size -> how many workers stored its finished trials."""
    import optuna

    out = {}
    for s in optuna.get_all_study_summaries(url):
        trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
        out[s.user_attrs["batch_size"]] = len({t.user_attrs.get("worker") for t in trials})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?", default="studies/nqm_sgd.toml")
    ap.add_argument("--workers", type=int, default=2, help="compared with 1 (default 2)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", help="folder for the SQLite files (default: a temp folder)")
    args = ap.parse_args()
    counts = (1, args.workers)
    print(f"{args.spec}: tuner run --workers {counts[0]} vs {counts[1]}, {args.reps} reps "
          f"interleaved, {os.cpu_count()} CPUs", flush=True)
    # per worker count: (whole run, start-up, trial phase, after the last trial, CPU) seconds
    runs: dict[int, list[tuple[float, ...]]] = {w: [] for w in counts}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        urls: dict[int, list[str]] = {w: [] for w in counts}
        for rep in range(args.reps):
            for w in counts:
                url = f"sqlite:///{Path(tmp) / f'w{w}_rep{rep}.db'}"
                urls[w].append(url)
                wall, cpu, began, ended = timed_run(args.spec, url, w)
                first, last = trial_phase(url)
                runs[w].append((wall, (first - began).total_seconds(),
                                (last - first).total_seconds(), (ended - last).total_seconds(),
                                cpu))
            loads.append(os.getloadavg()[0])
            print(f"  rep {rep}: " + ", ".join(
                f"{w} worker(s) {runs[w][-1][0]:.2f} s (trials {runs[w][-1][2]:.2f} s)"
                for w in counts) + f"  (load average {loads[-1]:.2f})", flush=True)

        def med(w: int, k: int) -> float:
            return statistics.median(r[k] for r in runs[w])

        print()
        print("| workers | whole run s (median) | start-up s | trial phase s | after s | "
              "CPU s | whole runs s |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for w in counts:
            print(f"| {w} | {med(w, 0):.2f} | {med(w, 1):.2f} | {med(w, 2):.2f} | "
                  f"{med(w, 3):.2f} | {med(w, 4):.2f} | "
                  f"{', '.join(f'{r[0]:.2f}' for r in runs[w])} |")
        print(f"ratio (1 worker / {args.workers} workers): whole runs "
              f"{med(1, 0) / med(args.workers, 0):.2f}x, trial phase "
              f"{med(1, 2) / med(args.workers, 2):.2f}x; load average after each rep: "
              f"{', '.join(f'{x:.2f}' for x in loads)}")

        base = urls[1][0]
        every = [u for w in counts for u in urls[w]]
        curve, slots = curve_points(args.spec, base), slot_results(base)
        same_curve = all(curve_points(args.spec, u) == curve for u in every)
        same_slots = all(slot_results(u) == slots for u in every)
        shared = workers_of(urls[args.workers][0])
        print(f"all {len(every)} runs: identical curve points: {same_curve}; identical trials "
              f"slot by slot: "
              f"{same_slots}; batch sizes whose trials {args.workers} workers shared: "
              f"{sum(v >= 2 for v in shared.values())}/{len(shared)}")
        if not (same_curve and same_slots):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
