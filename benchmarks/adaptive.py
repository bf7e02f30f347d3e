"""``tuner run --adaptive`` against the full grid: B_crit and trained examples, side by side.

For each spec: the full grid (every batch size, the spec's trials: what ``tuner run`` does) and
the adaptive measurement (``tuner.run.adaptive.run_adaptive`` with the default plan, or the one
given here) into fresh SQLite files; then B_crit of each (the McCandlish fit with its 95 %
bootstrap interval), their ratio, and the trained examples of each (steps every finished trial
ran, times its batch size) and their ratio, and per measured batch size the best steps of the
adaptive study over the full grid's (below 1: the adaptive study found a better best). The
full grid is itself a search: a second table compares both with a reference, the full grid's
studies topped up with compass steps around each best (what the adaptive plan does at the end
of each batch size). Goal (issue 14): B_crit within +-25 % of the full grid's at <= 0.2x the
trained examples.

    .venv/bin/python benchmarks/adaptive.py [SPEC ...] [--round 8] [--plateau 0.05]
        [--patience 2] [--first 4] [--ci-width 1.5] [--predict-within 0.25] [--no-warm-start]
        [--no-reference]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tuner.analysis.adaptive import Plan, trained_examples
from tuner.analysis.fit import fit_with_bootstrap
from tuner.analysis.records import best
from tuner.run import runner
from tuner.run import specs as spec_mod
from tuner.run.adaptive import compass, first_slots, run_adaptive, stored_trials

SPECS = ["studies/nqm_sgd.toml", "studies/nqm_momentum.toml", "studies/nqm_precond_p025.toml",
         "studies/nqm_precond_p050.toml", "studies/nqm_precond_p075.toml",
         "studies/digits_mlp.toml"]


def full_grid(spec: spec_mod.Spec, url: str) -> tuple[dict, float]:
    """Every batch size at the spec's trials; (trials by batch size, seconds)."""
    t0 = time.perf_counter()
    runner.run(spec, url, spec.batch_sizes, spec.trials, summary=False)
    seconds = time.perf_counter() - t0
    return stored_trials(spec, url), seconds


def polished(spec: spec_mod.Spec, url: str, full: dict, plan: Plan) -> dict:
    """The full grid's studies, each topped up with compass steps around its best
    (:func:`tuner.run.adaptive.compass`, the plan's steps): the best the tool knows how to
    find at each batch size, a reference for both. Trials by batch size."""
    out = {}
    for b, trials in full.items():
        n = len(first_slots(trials, len(trials)))
        if best(trials) is not None:
            trials, _, _ = compass(spec, url, b, n, trials, plan, cap=10 * n)
        out[b] = trials
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="*", default=SPECS)
    d = Plan()
    ap.add_argument("--first", type=int, default=d.first)
    ap.add_argument("--round", type=int, default=d.chunk)
    ap.add_argument("--plateau", type=float, default=d.plateau)
    ap.add_argument("--patience", type=int, default=d.patience)
    ap.add_argument("--ci-width", type=float, default=d.width)
    ap.add_argument("--predict-within", type=float, default=d.predict_within)
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip the reference (the full grid with compass steps at each batch size)")
    ap.add_argument("--no-warm-start", action="store_true",
                    help="the plan without warm starts and compass steps (as before 2026-12-08)")
    args = ap.parse_args()
    plan = Plan(args.first, args.round, args.plateau, args.patience, args.ci_width,
                args.predict_within, warm_start=not args.no_warm_start)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; plan: {plan.text()}")
    rows = []
    for path in args.specs:
        spec = spec_mod.load(path)
        with tempfile.TemporaryDirectory() as tmp:
            full, full_s = full_grid(spec, f"sqlite:///{Path(tmp) / 'full.db'}")
            t0 = time.perf_counter()
            r = run_adaptive(spec, f"sqlite:///{Path(tmp) / 'adaptive.db'}", plan,
                             lambda s: None)
            ada_s = time.perf_counter() - t0
            ref = polished(spec, f"sqlite:///{Path(tmp) / 'full.db'}", full, plan) \
                if args.reference else None
        f = fit_with_bootstrap(full)
        rf = fit_with_bootstrap(ref) if ref else None
        full_x = sum(trained_examples(b, t) for b, t in full.items())
        full_n = sum(len(t) for t in full.values())
        ada_n = sum(len(t) for t in r.trials.values())
        ratios = sorted(best(r.trials[b]).steps_to_target / best(full[b]).steps_to_target
                        for b in r.trials if best(r.trials[b]) and best(full[b]))
        per_b = (f"{ratios[len(ratios) // 2]:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"
                 if ratios else "-")
        row = (spec.name, f, r, full_x, full_n, ada_n, full_s, ada_s, per_b, rf)
        rows.append(row)
        print(f"{spec.name}: full {f.b_crit if f else None}, adaptive "
              f"{r.fit.b_crit if r.fit else None}; {r.reason}", flush=True)
    print()
    print("| spec | B_crit full grid [95 %] | B_crit adaptive [95 %] | ratio | batch sizes | "
          "trials (full) | trained examples ratio | best steps adaptive / full, median (range) | "
          "wall s adaptive / full | stopped because |")
    print("|---|---|---|---:|---|---:|---:|---|---|---|")

    def bc(f: object) -> str:
        if f is None:
            return "no fit"
        lo, hi = f.ci95.get("b_crit", (float("nan"),) * 2)  # type: ignore[attr-defined]
        return f"{f.b_crit:.4g} [{lo:.4g}, {hi:.4g}]"  # type: ignore[attr-defined]

    for name, f, r, full_x, full_n, ada_n, full_s, ada_s, per_b, rf in rows:
        ratio = r.fit.b_crit / f.b_crit if f and r.fit else float("nan")
        print(f"| {name} | {bc(f)} | {bc(r.fit)} | {ratio:.2f} | "
              f"{', '.join(map(str, sorted(r.progress.measured)))} | {ada_n} ({full_n}) | "
              f"{r.progress.examples / full_x:.3f} | {per_b} | {ada_s:.1f} / {full_s:.1f} | "
              f"{r.reason} |")
    if any(row[-1] for row in rows):
        print()
        print("Reference: the full grid's studies, each topped up with compass steps around its "
              "best (the plan's steps)")
        print()
        print("| spec | B_crit reference [95 %] | full grid / reference | adaptive / reference |")
        print("|---|---|---:|---:|")
        for name, f, r, *_, rf in rows:
            if rf is not None:
                print(f"| {name} | {bc(rf)} | {f.b_crit / rf.b_crit:.2f} | "
                      f"{r.fit.b_crit / rf.b_crit if r.fit else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
