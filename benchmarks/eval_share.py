"""Evaluation's share of a trial's wall time: real Fashion-MNIST CNN trials at the spec's cadence.

Runs a few trials of ``studies/fashion_mnist_cnn.toml`` (its evaluation cadence: the first at step
20, then every 20 steps until 2 % exceeds 20 steps, then every 2 %) with the budget cut to
``--steps`` steps so that it takes minutes, not hours, on a CPU, into a temp SQLite file, and
prints each trial's ``eval_share`` attr (``eval_seconds / wall_seconds``). Then the arithmetic
behind it: one evaluation (the whole validation split) against one training step, and the
interval at which evaluation would take 5 % of the time, and the share projected from those two
measured costs for trials that run 10 % and all of the spec's whole budget, at the spec's cadence
and with ``[eval] max_share`` (``--max-share``, default 0.05; see tuner/spec/cadence.py).

    .venv/bin/python benchmarks/eval_share.py [--batch-size B ...] [--steps N] [--trials N]
                                              [--max-share S] [--run-max-share]

``--run-max-share`` runs the trials themselves with ``max_share`` (give ``--steps`` well above its
interval, or the budget's end is the one evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path

import optuna

from tuner.run import runner
from tuner.run import specs as spec_mod
from tuner.store.storage import open_storage, study_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec", nargs="?", default="studies/fashion_mnist_cnn.toml")
    ap.add_argument("--batch-size", "-b", type=int, action="append", dest="batch_sizes",
                    help="batch sizes to run (repeatable; default 64, 512, 2048)")
    ap.add_argument("--steps", type=int, default=0,
                    help="budget in steps per trial (default: 120 at B <= 64, 60 at B <= 512, "
                         "else 40; a few minutes in all on a 2-core CPU)")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--eval-batch", type=int, help="override the evaluation batch size")
    ap.add_argument("--max-share", type=float, default=0.05,
                    help="the [eval] max_share to project (default 0.05)")
    ap.add_argument("--run-max-share", action="store_true",
                    help="run the trials with [eval] max_share = --max-share")
    args = ap.parse_args()
    if not 0.001 <= args.max_share < 1:
        ap.error(f"--max-share {args.max_share}: allowed: a fraction in [0.001, 1)")

    full = spec_mod.load(args.spec)
    shared = dataclasses.replace(full, cadence=dataclasses.replace(full.cadence,
                                                                   max_share=args.max_share))
    spec = shared if args.run_max_share else full
    if args.eval_batch:
        spec.workload.eval_batch_size = spec.workload.eval_batch_size_cpu = args.eval_batch
    sizes = tuple(args.batch_sizes or (64, 512, 2048))
    c = spec.cadence
    print(f"{spec.path}: cadence first {c.first_step}, relative {c.relative:.0%}, min interval "
          f"{c.min_interval}, max_share {c.max_share}; validation "
          f"{spec.workload.num_val_examples()} examples; "
          f"eval batch {spec.workload.eval_batch_size} ({spec.workload.eval_batch_size_cpu} on the "
          f"CPU); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    spec.workload.data()  # read the files now, not inside the first trial's wall time
    print("| B | trial | steps | evaluations | wall s | eval s | eval_share | outcome |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'share.db'}"
        for b in sizes:
            steps = args.steps or (120 if b <= 64 else 60 if b <= 512 else 40)
            budget = dataclasses.replace(spec.budget, max_steps=steps, max_epochs=None,
                                         min_steps=1)
            short = dataclasses.replace(spec, budget=budget, batch_sizes=(b,))
            runner.run(short, url, (b,), args.trials)
            study = optuna.load_study(study_name=study_name(short, b), storage=open_storage(url))
            for t in study.get_trials(deepcopy=False):
                a = t.user_attrs
                n_evals = len(t.intermediate_values)
                print(f"| {b} | {t.number} | {a['stopped_at_step']} | {n_evals} | "
                      f"{a['wall_seconds']:.1f} | {a['eval_seconds']:.1f} | "
                      f"{a['eval_share']:.1%} | {a['outcome']} |", flush=True)
                if n_evals and a["stopped_at_step"]:
                    per_eval = a["eval_seconds"] / n_evals
                    per_step = (a["wall_seconds"] - a["eval_seconds"]) / a["stopped_at_step"]
                    summary.append((b, per_eval, per_step))
    print()
    print("| B | s per evaluation | s per step | steps of training one evaluation costs | "
          f"share at {c.min_interval} steps apart | interval for a {args.max_share:.0%} share |")
    print("|---:|---:|---:|---:|---:|---:|")
    costs = {}  # B: median (s per evaluation, s per step)
    for b in sizes:
        rows = [(e, s) for bb, e, s in summary if bb == b]
        if rows:
            costs[b] = (statistics.median(r[0] for r in rows),
                        statistics.median(r[1] for r in rows))
    for b, (e, s) in costs.items():
        at20 = e / (e + c.min_interval * s)
        print(f"| {b} | {e:.2f} | {s:.4f} | {e / s:.0f} | {at20:.0%} | "
              f"{(1 / args.max_share - 1) * e / s:.0f} steps |")

    print()
    print("Projected from those costs, for trials that stop at 10 % and at 100 % of the spec's "
          "budget (evaluations, share):")
    print(f"| B | budget steps | spec cadence, 10 % | spec cadence, 100 % | max_share "
          f"{args.max_share}, 10 % | max_share {args.max_share}, 100 % |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b, (e, s) in costs.items():
        budget = full.max_steps(b)
        cells = []
        for sp in (full, shared):
            evals = sp.eval_steps(b)
            for stop in (max(1, budget // 10), budget):
                n = sum(1 for x in evals if x <= stop) or 1
                cells.append(f"{n}, {n * e / (n * e + stop * s):.1%}")
        print(f"| {b} | {budget} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
