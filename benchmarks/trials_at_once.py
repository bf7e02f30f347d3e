"""Trials per second: K trials trained at once (``[trainer] trials_at_once = K``) vs one at a time.

The same 16 seeded trials (momentum SGD, learning rates spread over a decade, a target never
reached, so each trains its whole budget, evaluated every ``--eval-every`` steps) run

- one at a time through ``tuner.train.trial.train``, the path every trial takes by default (K = 1);
- through ``tuner.train.many.train_many`` with K lanes (K = 4, 16): one vectorised model.

Same process, same data on the device; repetitions are interleaved (each mode takes its turn
first) so load from other processes hits them alike. The table gives the median trials/s and the
median ratio to one at a time within the same repetition. Set-up (model building, seeding) and
evaluation are included: they are part of what a trial costs.

    .venv/bin/python benchmarks/trials_at_once.py [--reps 3] [--device cpu|cuda] [--steps 200]
        [--eval-every 20] [--batch-sizes 8,32,256] [--ks 4,16] [--workloads digits,fmnist_mlp]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tuner.spec.cadence import eval_steps
from tuner.train.many import train_many
from tuner.train.trial import train
from tuner.workload import Target, TrainedWorkload, TrialRequest
from workloads.digits import Digits, DigitsOptions
from workloads.fashion_mnist import FashionMNIST, FashionMNISTOptions

NEVER = Target("error", -1.0, "minimize")  # never reached: every trial takes all its steps
TRIALS = 16


def requests(batch_size: int, steps: int, device: str, every: int = 20) -> list[TrialRequest]:
    """Sixteen trials: learning rates 0.01 to 0.1, momentum 0.9, seeds 0..15, evaluated every
    ``every`` steps."""
    return [TrialRequest(
        params={"learning_rate": 0.01 * 10 ** (i / (TRIALS - 1)), "one_minus_momentum": 0.1,
                "weight_decay": 0.0},
        optimizer="momentum", schedule="constant", batch_size=batch_size, max_steps=steps,
        eval_steps=eval_steps(steps, every, 0.0, every), target=NEVER, seed=i,
        accelerator=device) for i in range(TRIALS)]


def one_at_a_time(workload: TrainedWorkload, reqs: list[TrialRequest]) -> float:
    t0 = time.perf_counter()
    for r in reqs:
        train(workload, r, lambda s, m: False)
    return time.perf_counter() - t0


def at_once(workload: TrainedWorkload, reqs: list[TrialRequest], k: int, device: str) -> float:
    queue = list(reqs)
    t0 = time.perf_counter()
    ran = train_many(workload, lambda: (None, queue.pop(0), lambda s, m: False) if queue
                     else None, lambda h, r: None, k, device)
    assert ran == len(reqs)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=200, help="training steps per trial")
    ap.add_argument("--batch-sizes", default="8,32,256")
    ap.add_argument("--ks", default="4,16")
    ap.add_argument("--workloads", default="digits,fmnist_mlp")
    ap.add_argument("--eval-every", type=int, default=20,
                    help="steps between evaluations (20: the shipped Fashion-MNIST specs' "
                    "cadence over a trial's first 1,000 steps)")
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    workloads = {"digits": lambda: Digits(DigitsOptions(hidden=[128])),
                 "fmnist_mlp": lambda: FashionMNIST(FashionMNISTOptions(model="mlp")),
                 "fmnist_cnn": lambda: FashionMNIST(FashionMNISTOptions(model="cnn"))}
    ks = [int(k) for k in a.ks.split(",")]
    print(f"# {TRIALS} trials of {a.steps} steps each, evaluated every {a.eval_every}; "
          f"device {a.device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {a.reps}")
    print(f"{'workload':10s} {'B':>5s} {'K':>3s} {'trials/s':>9s} {'x one':>6s}")
    for name in a.workloads.split(","):
        w = workloads[name]()
        w.data_on(torch.device(a.device))
        for b in (int(x) for x in a.batch_sizes.split(",")):
            reqs = requests(b, a.steps, a.device, a.eval_every)
            at_once(w, reqs[:2], 2, a.device)  # warm-up (vmap, allocator)
            one_at_a_time(w, reqs[:1])
            times: dict[int, list[float]] = {1: [], **{k: [] for k in ks}}
            modes = [1, *ks]
            for rep in range(a.reps):
                order = modes[rep % len(modes):] + modes[:rep % len(modes)]
                for k in order:
                    times[k].append(one_at_a_time(w, reqs) if k == 1
                                    else at_once(w, reqs, k, a.device))
            for k in modes:
                ratio = statistics.median(o / t for o, t in zip(times[1], times[k]))
                print(f"{name:10s} {b:5d} {k:3d} {TRIALS / statistics.median(times[k]):9.2f} "
                      f"{ratio:6.2f}", flush=True)


if __name__ == "__main__":
    main()
