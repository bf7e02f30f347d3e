"""What the lossless pruner saves on a real study: the same seeded trials with it and without.

Runs a spec's studies twice into fresh SQLite files in a temp folder: with the spec's pruner
(``studies/digits_mlp.toml``: lossless, slack 1.25), then with pruning off. The quasi-random
sampler and the trial seeds do not depend on outcomes, so trial n has the same params and seed in
both runs; a pruned trial is just stopped earlier. Prints per batch size the total steps and
wall time of each run and whether the best trial (number, steps, params) is identical.

    .venv/bin/python benchmarks/pruning_savings.py [SPEC] [--batch-size B ...] [--trials N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from tuner.run import specs as spec_mod
from tuner.run.savings import savings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?", default="studies/digits_mlp.toml")
    ap.add_argument("--batch-size", "-b", type=int, action="append", dest="batch_sizes",
                    help="only these batch sizes of the spec (repeatable; default: all)")
    ap.add_argument("--trials", "-n", type=int, help="trials per batch size (default: the spec's)")
    args = ap.parse_args()

    spec = spec_mod.load(args.spec)
    sizes = tuple(args.batch_sizes or spec.batch_sizes)
    trials = args.trials or spec.trials
    print(f"{spec.path}: pruner {spec.pruner.name} (slack {spec.pruner.slack}), "
          f"{trials} trials at B = {', '.join(map(str, sizes))}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in sizes:  # one batch size at a time, so each row's two runs are close in time
            folder = Path(tmp) / f"B{b}"
            folder.mkdir()
            pruned, full = savings(spec, folder, (b,), trials)
            rows.append((b, pruned, full))
            same = pruned.best == full.best
            print(f"  B={b}: {pruned.total_steps} vs {full.total_steps} steps, "
                  f"{pruned.wall_seconds:.1f} vs {full.wall_seconds:.1f} s, "
                  f"best identical: {same}", flush=True)

    print()
    print("| B | steps pruned | steps unpruned | steps ratio | wall s pruned | wall s unpruned "
          "| wall ratio | best trial (number, steps) | identical |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|")
    totals = [0, 0, 0.0, 0.0]
    for b, p, f in rows:
        number, steps, _ = p.best[b]
        print(f"| {b} | {p.total_steps:,} | {f.total_steps:,} | "
              f"{p.total_steps / f.total_steps:.2f} | {p.wall_seconds:.1f} | "
              f"{f.wall_seconds:.1f} | {p.wall_seconds / f.wall_seconds:.2f} | "
              f"{(number, steps)} | {'yes' if p.best == f.best else 'NO'} |")
        totals = [totals[0] + p.total_steps, totals[1] + f.total_steps,
                  totals[2] + p.wall_seconds, totals[3] + f.wall_seconds]
    print(f"| all | {totals[0]:,} | {totals[1]:,} | {totals[0] / totals[1]:.2f} | "
          f"{totals[2]:.1f} | {totals[3]:.1f} | {totals[2] / totals[3]:.2f} | | "
          f"{'yes' if all(p.best == f.best for _, p, f in rows) else 'NO'} |")
    if any(p.best != f.best for _, p, f in rows):
        for b, p, f in rows:
            if p.best != f.best:
                print(f"B={b}: pruned best {p.best[b]}, unpruned best {f.best[b]}")


if __name__ == "__main__":
    main()
