"""Calibrate the tuning-adequacy rule on the NQM, where the exact optimum is known.

For ``studies/nqm_sgd.toml`` and ``studies/nqm_momentum.toml`` (10 batch sizes each), every batch
size's optimum over the spec's search space is found directly from the closed form
(``workloads.nqm.Dynamics.first_hit``): a log-spaced grid, then Nelder-Mead from the best grid
points, and the minimum over everything evaluated, stored trials included. Then, for several
seeds (independent scrambles of the quasi-random sampler), the spec is run with the real CLI
(``tuner run --trials N``, topping the same studies up N = 8, 16, 32, 64, 100) and, after each N,
every batch size's stored best-of-N is compared with the optimum (gap = best / optimum - 1) and
judged by :func:`tuner.analysis.summary.adequacy` (the default rule), as ``tuner edges`` does.

Prints, per spec and N: the points judged, the share flagged under-tuned, the gap's median and
90th percentile among points judged adequate and among flagged ones, and how often the best's 95 %
bootstrap interval [lo, best] holds the optimum. Then, pooled over specs, seeds and N, the same
for other settings of the rule's two main knobs (good-region count k, interval move x), which
is how the defaults were chosen.

    .venv/bin/python benchmarks/adequacy_nqm.py [--seeds 5] [--ns 8,16,32,64,100]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from tuner.analysis.adequacy import Rule, assess
from tuner.analysis.summary import adequacy
from tuner.store.source import load
from tuner.store.storage import open_readonly
from workloads.nqm import Dynamics, spectrum

SPECS = ["nqm_sgd", "nqm_momentum"]


def optimum(spec: dict, batch_size: int, h: np.ndarray) -> float:
    """The fewest steps to the target over the spec's search space (grid + Nelder-Mead)."""
    space = spec["search_space"]
    names = list(space)
    lo = np.log([space[n]["low"] for n in names])
    hi = np.log([space[n]["high"] for n in names])
    target, max_steps = spec["target"]["value"], spec["budget"]["max_steps"]
    p = spec["workload"].get("precondition_power", 0.0)

    def steps(x: np.ndarray) -> float:
        x = np.clip(x, lo, hi)
        vals = dict(zip(names, np.exp(x)))
        dyn = Dynamics(h, float(vals["learning_rate"]), vals.get("one_minus_momentum"),
                       batch_size, p, 0.0)
        if dyn.diverged:
            return math.inf
        hit = dyn.first_hit(target, max_steps)
        return math.inf if hit is None else float(hit)

    n_grid = 600 if len(names) == 1 else 40
    axes = [np.linspace(a, b, n_grid) for a, b in zip(lo, hi)]
    grid = np.array(np.meshgrid(*axes)).reshape(len(names), -1).T
    vals = np.array([steps(x) for x in grid])
    found = [float(vals.min())]
    for i in np.argsort(vals)[:3]:
        if not math.isfinite(vals[i]):
            continue
        res = minimize(lambda x: math.log(steps(x)) if math.isfinite(steps(x)) else 1e3,
                       grid[i], method="Nelder-Mead",
                       bounds=list(zip(lo, hi)), options={"xatol": 1e-4, "fatol": 1e-6})
        found.append(steps(res.x))
    return min(found)


@dataclasses.dataclass
class Row:
    spec: str
    seed: int
    n: int
    batch_size: int
    gap: float
    ci_low: float | None
    optimum: float
    adequacy: object  # tuner.analysis.adequacy.Adequacy under the default rule
    study: object  # the BatchStudy, to re-judge under other rules


def pct(xs: list[float], q: float) -> str:
    return f"{np.percentile(xs, q):.1%}" if xs else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ns", default="8,16,32,64,100")
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SPECS:
            path = Path(f"studies/{name}.toml")
            spec = tomllib.loads(path.read_text())
            h = spectrum(spec["workload"].get("dimensions", 10_000))
            opt = {b: optimum(spec, b, h) for b in spec["batch_sizes"]}
            print(f"{name}: optimum steps per B: "
                  + ", ".join(f"{b}: {v:.0f}" for b, v in opt.items()), flush=True)
            for seed in range(args.seeds):
                url = f"sqlite:///{tmp}/{name}_{seed}.db"
                for n in ns:
                    subprocess.run([sys.executable, "-c", "from tuner.cli import main; main()",
                                    "run", str(path),
                                    "--trials", str(n), "--seed", str(seed), "--storage", url,
                                    "-q", "--no-summary"], check=True,
                                   stdout=subprocess.DEVNULL)
                    s = load(open_readonly(url), str(path), seed)
                    for st, a in zip(s.studies, adequacy(s)):
                        if a.best_steps is None:
                            continue
                        o = min(opt[st.batch_size], a.best_steps)
                        opt[st.batch_size] = o
                        rows.append(Row(name, seed, n, st.batch_size, a.best_steps / o - 1,
                                        a.ci95[0] if a.ci95 else None, o, a, st))
    # the optimum may have improved on a later run's trial: gaps against the final one
    final = {(r.spec, r.batch_size): r.optimum for r in rows}
    for r in rows:
        r.optimum = min(r.optimum, final[(r.spec, r.batch_size)])
        r.gap = r.adequacy.best_steps / r.optimum - 1  # type: ignore[attr-defined]
    print(f"\ndefault rule: {Rule().text()}\n")
    print("| spec | N | points | under-tuned | median gap (adequate) | p90 gap (adequate) | "
          "max gap (adequate) | median gap (under-tuned) | interval holds optimum |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in SPECS:
        for n in ns:
            rs = [r for r in rows if r.spec == name and r.n == n]
            ok = [r.gap for r in rs if not r.adequacy.under_tuned]  # type: ignore[attr-defined]
            bad = [r.gap for r in rs if r.adequacy.under_tuned]  # type: ignore[attr-defined]
            cover = [r.ci_low is not None and r.ci_low <= r.optimum for r in rs]
            print(f"| {name} | {n} | {len(rs)} | {len(bad) / max(1, len(rs)):.0%} | "
                  f"{pct(ok, 50)} | {pct(ok, 90)} | {max(ok):.1%} | {pct(bad, 50)} | "
                  f"{np.mean(cover):.0%} |" if ok else
                  f"| {name} | {n} | {len(rs)} | {len(bad) / max(1, len(rs)):.0%} | - | - | - | "
                  f"{pct(bad, 50)} | {np.mean(cover):.0%} |")
    print("\nother settings, pooled over both specs, all seeds and N:\n")
    print("| min_good k | max_move x | under-tuned | p90 gap (adequate) | max gap (adequate) | "
          "median gap (under-tuned) |")
    print("|---:|---:|---:|---:|---:|---:|")
    # k = 1, x = inf: no rule at all (every point judged adequate), the baseline
    for k, x in [(1, math.inf)] + [(k, x) for k in (2, 3, 4, 6) for x in (0.1, 0.25, 0.5)]:
        rule = Rule(min_good=k, max_move=x, min_feasible=0.0 if k == 1 else 0.5)
        judged = [(r.gap, assess(r.batch_size, r.study.trials, r.study.search_space,
                                 rule).under_tuned) for r in rows]
        ok = [g for g, u in judged if not u]
        bad = [g for g, u in judged if u]
        print(f"| {k} | {x:g} | {len(bad) / len(judged):.0%} | {pct(ok, 90)} | "
              f"{(max(ok) if ok else math.nan):.1%} | {pct(bad, 50)} |")


if __name__ == "__main__":
    main()
