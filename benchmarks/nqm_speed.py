"""How long one NQM trial's exact steps-to-target takes (K = 10^4), side by side with a baseline.

For each shipped NQM spec, at batch sizes 4, 1024 and 2^20, 100 learning rates (and momenta)
from the spec's search space are timed: building the closed form plus the certified search
(`Dynamics(...).first_hit`). The baseline, in the same run, is brute force: iterating the
per-direction recursion step by step, timed per 1,000 steps and scaled to the same answer (it is
too slow to run to 10^6 steps). Medians over 3 repetitions.

    .venv/bin/python benchmarks/nqm_speed.py
"""

from __future__ import annotations

import statistics
import time
import tomllib
from pathlib import Path

import numpy as np
from scipy.stats import qmc

from workloads.nqm import Dynamics, iterate, spectrum

SPECS = ["nqm_sgd", "nqm_momentum", "nqm_precond_p025", "nqm_precond_p050", "nqm_precond_p075"]
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


def main() -> None:
    h = spectrum(10_000)
    brute_per_step = []
    for _ in range(3):
        t0 = time.perf_counter()
        iterate(h, 0.5, 0.1, 64, 0.0, 1000)
        brute_per_step.append((time.perf_counter() - t0) / 1000)
    per_step = statistics.median(brute_per_step)
    print(f"brute force: {per_step * 1e6:.1f} us per step (K = 10^4)\n")
    print(f"{'spec':18s} {'B':>8s} {'median ms':>10s} {'max ms':>8s} {'reached':>8s} "
          f"{'median t*':>10s} {'brute/closed':>13s}")
    all_ms = []
    for name in SPECS:
        spec = tomllib.loads(Path(f"studies/{name}.toml").read_text())
        p = spec["workload"].get("precondition_power", 0.0)
        target, budget = spec["target"]["value"], spec["budget"]["max_steps"]
        for b in BATCHES:
            times, hits = [], []
            for lr, omm in points(spec, 100):
                reps = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    d = Dynamics(h, lr, omm, b, p)
                    hit = None if d.diverged else d.first_hit(target, budget)
                    reps.append(time.perf_counter() - t0)
                times.append(statistics.median(reps))
                if hit is not None:
                    hits.append(hit)
            ms = [t * 1e3 for t in times]
            all_ms += ms
            med_hit = statistics.median(hits) if hits else float("nan")
            ratio = med_hit * per_step / statistics.median(times) if hits else float("nan")
            print(f"{name:18s} {b:8d} {statistics.median(ms):10.2f} {max(ms):8.2f} "
                  f"{len(hits):8d} {med_hit:10.0f} {ratio:13.0f}x")
    print(f"\nall {len(all_ms)} trials: median {statistics.median(all_ms):.2f} ms, "
          f"95th percentile {np.percentile(all_ms, 95):.2f} ms, max {max(all_ms):.2f} ms")


if __name__ == "__main__":
    main()
