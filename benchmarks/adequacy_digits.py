"""The tuning-adequacy rule on real training: digits, against a large study's best.

``studies/digits_mlp.toml`` is run with the real CLI at a few batch sizes with many trials
(default 96: ``tuner run -b 16 -b 128 -b 1024 --trials 96``); that study's best stands in for
the optimum (it is itself a best-of-96, so the gaps below are, if anything, too small, and seed
noise of ~10 % in steps-to-target is part of every trial). Then random subsets of N of its
trials (N = 8, 16, 32; 200 subsets each, without replacement) are judged by the default rule,
as ``tuner edges`` judges a study of N trials, and their best compared with the reference best
(gap = best of subset / reference - 1).

Prints, per batch size and N: the share of subsets flagged under-tuned, and the gap's median
and 90th percentile among subsets judged adequate and among flagged ones.

    .venv/bin/python benchmarks/adequacy_digits.py [--trials 96] [-b 16 -b 128 -b 1024]
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from adequacy_nqm import pct
from tuner.analysis.adequacy import Rule, assess
from tuner.store.source import load
from tuner.store.storage import open_readonly

SPEC = Path("studies/digits_mlp.toml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=96)
    ap.add_argument("-b", "--batch-size", type=int, action="append", dest="batch_sizes")
    ap.add_argument("--ns", default="8,16,32")
    ap.add_argument("--subsets", type=int, default=200)
    args = ap.parse_args()
    batch_sizes = args.batch_sizes or [16, 128, 1024]
    ns = [int(x) for x in args.ns.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/digits.db"
        subprocess.run([sys.executable, "-c", "from tuner.cli import main; main()", "run",
                        str(SPEC), "--trials", str(args.trials), "--storage", url, "-q",
                        "--no-summary", *(f"-b{b}" for b in batch_sizes)], check=True,
                       stdout=subprocess.DEVNULL)
        s = load(open_readonly(url), str(SPEC))
    rng = np.random.default_rng(0)
    print(f"default rule: {Rule().text()}\n")
    print("| B | reference best (of all) | N | under-tuned | median gap (adequate) | "
          "p90 gap (adequate) | median gap (under-tuned) | p90 gap (under-tuned) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for st in s.studies:
        ref = assess(st.batch_size, st.trials, st.search_space)
        if ref.best_steps is None:
            print(f"| {st.batch_size} | no trial reached the target | | | | | | |")
            continue
        for n in ns:
            ok, bad = [], []
            for i in range(args.subsets):
                pick = rng.choice(len(st.trials), size=n, replace=False)
                sub = dataclasses.replace(st, trials=[st.trials[j] for j in pick])
                a = assess(sub.batch_size, sub.trials, sub.search_space)
                if a.best_steps is None:
                    bad.append(np.inf)
                    continue
                (bad if a.under_tuned else ok).append(a.best_steps / ref.best_steps - 1)
            print(f"| {st.batch_size} | {ref.best_steps} ({ref.status}, {ref.n_good} good) | "
                  f"{n} | {len(bad)} of {args.subsets} | {pct(ok, 50)} | {pct(ok, 90)} | "
                  f"{pct([b for b in bad if np.isfinite(b)], 50)} | "
                  f"{pct([b for b in bad if np.isfinite(b)], 90)} |")


if __name__ == "__main__":
    main()
