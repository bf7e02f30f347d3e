"""How long one NQM trial's exact steps-to-target takes (K = 10^4), side by side with a baseline.

For each shipped NQM spec, at batch sizes 4, 1024 and 2^20, 100 learning rates (and momenta)
from the spec's search space are timed: building the closed form plus the certified search
(`Dynamics(...).first_hit`). The baseline, in the same run, is brute force: iterating the
per-direction recursion step by step, timed per 1,000 steps and scaled to the same answer (it is
too slow to run to 10^6 steps). Medians over 3 repetitions. Then the same, reported apart, for
``nqm_momentum_ema`` (the loss at an exponential moving average of the iterates: costlier, and not
what the 5 ms goal is about). Wall-clock times: the load average is printed with them.

    .venv/bin/python benchmarks/nqm_speed.py
"""

from __future__ import annotations

import os
import statistics
import time
import tomllib
from pathlib import Path

import numpy as np
from scipy.stats import qmc

from workloads.nqm import Dynamics, iterate, spectrum

SPECS = ["nqm_sgd", "nqm_momentum", "nqm_precond_p025", "nqm_precond_p050", "nqm_precond_p075"]
EMA_SPEC = "nqm_momentum_ema"
BATCHES = [4, 1024, 2 ** 20]


def points(spec: dict, n: int) -> list[tuple[float, float | None]]:
    space = spec["search_space"]
    names = list(space)
    u = qmc.Halton(len(names), seed=0).random(n)
    out = []
    for row in u:
        vals = {}
        for name, x in zip(names, row):
            lo, hi = np.log(space[name]["low"]), np.log(space[name]["high"])
            vals[name] = float(np.exp(lo + x * (hi - lo)))
        out.append((vals["learning_rate"], vals.get("one_minus_momentum")))
    return out


def brute_per_step(h: np.ndarray, ema: float) -> float:
    """Seconds per step of iterating the recursion (median of 3 runs of 1,000 steps)."""
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        iterate(h, 0.5, 0.1, 64, 0.0, 1000, ema)
        runs.append((time.perf_counter() - t0) / 1000)
    return statistics.median(runs)


def time_spec(h: np.ndarray, name: str, per_step: float) -> list[float]:
    """Print one row per batch size; return the trials' times in ms."""
    spec = tomllib.loads(Path(f"studies/{name}.toml").read_text())
    p = spec["workload"].get("precondition_power", 0.0)
    ema = spec["workload"].get("ema", 0.0)
    target, budget = spec["target"]["value"], spec["budget"]["max_steps"]
    all_ms = []
    for b in BATCHES:
        times, hits = [], []
        for lr, omm in points(spec, 100):
            reps = []
            for _ in range(3):
                t0 = time.perf_counter()
                d = Dynamics(h, lr, omm, b, p, ema)
                hit = None if d.diverged else d.first_hit(target, budget)
                reps.append(time.perf_counter() - t0)
            times.append(statistics.median(reps))
            if hit is not None:
                hits.append(hit)
        ms = [t * 1e3 for t in times]
        all_ms += ms
        med_hit = statistics.median(hits) if hits else float("nan")
        ratio = med_hit * per_step / statistics.median(times) if hits else float("nan")
        print(f"{name:18s} {b:8d} {statistics.median(ms):10.2f} {np.percentile(ms, 95):8.2f} "
              f"{max(ms):8.2f} {len(hits):8d} {med_hit:12.0f} {ratio:13.0f}x")
    return all_ms


def main() -> None:
    h = spectrum(10_000)
    per_step = brute_per_step(h, 0.0)
    print(f"load average {os.getloadavg()[0]:.2f}; brute force: {per_step * 1e6:.1f} us per step "
          f"(K = 10^4)\n")
    print(f"{'spec':18s} {'B':>8s} {'median ms':>10s} {'p95 ms':>8s} {'max ms':>8s} "
          f"{'reached':>8s} {'median t*':>12s} {'brute/closed':>13s}")
    all_ms = []
    for name in SPECS:
        all_ms += time_spec(h, name, per_step)
    print(f"\nall {len(all_ms)} trials: median {statistics.median(all_ms):.2f} ms, "
          f"95th percentile {np.percentile(all_ms, 95):.2f} ms, max {max(all_ms):.2f} ms")
    print()
    ema = tomllib.loads(Path(f"studies/{EMA_SPEC}.toml").read_text())["workload"]["ema"]
    ema_ms = time_spec(h, EMA_SPEC, brute_per_step(h, ema))
    print(f"\n{EMA_SPEC}, {len(ema_ms)} trials: median "
          f"{statistics.median(ema_ms):.2f} ms, 95th percentile "
          f"{np.percentile(ema_ms, 95):.2f} ms, max {max(ema_ms):.2f} ms; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
