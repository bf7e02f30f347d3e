"""Training steps per second: a raw PyTorch loop vs our trial loop vs Lightning's ``Trainer``.

Same model, same data (tensors on the device), same optimizer and schedule, same batch size and
the same process for every loop; repetitions are interleaved (raw, ours, trainer, trainer/batched,
then ours, trainer, trainer/batched, raw, ...: each loop takes its turn first) so load from other
processes hits them alike. Each measurement times a fixed number of steps (about 0.4 s of the
raw loop) after a warm-up, and excludes set-up and teardown.

- raw: a hand-written loop: a shuffled index per epoch, ``x[idx]``, forward, cross-entropy,
  ``zero_grad``, ``backward``, ``step`` (and the schedule's ``step`` when the spec decays the
  learning rate). No per-step ``.item()``.
- ours: ``tuner.train.loop.train``, the code path every trial runs (Lightning Fabric), with evaluation at
  two steps only: at the end of the warm-up and at the last step; the timed window runs between
  them, and the last evaluation's own time is subtracted (``eval_seconds`` covers evaluation).
- trainer: ``lightning.Trainer`` (logger, checkpointing, progress bar, model summary off) over the
  default ``DataLoader(TensorDataset(x, y), batch_size=B, shuffle=True)``.
- trainer/batched: the same ``Trainer`` fed whole batches by index (no per-sample collate), which
  isolates the Trainer's own per-step cost.

Ratios are the median over repetitions of (loop / raw in the same repetition).
``--ref REV`` adds "ours@REV": ``tuner/loop.py`` (and ``tuner/optim.py``) as they were at git
revision REV, timed in the same run (before/after comparisons).

    .venv/bin/python benchmarks/loop_speed.py [--reps 5] [--ref main] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from tuner.train.trial import train
from tuner.workload import Target, TrainedWorkload, TrialRequest
from workloads.digits import Digits, DigitsOptions
from workloads.fashion_mnist import FashionMNIST, FashionMNISTOptions

clock = time.perf_counter  # --clock cpu: time.process_time (robust to other processes' load)
LOOPS = ("raw", "ours", "trainer", "trainer/batched")  # "ours@REV" joins them with --ref
NEVER = Target("error", -1.0, "minimize")  # never reached: every run takes all its steps


@dataclass
class Case:
    """One row of the table: a workload at a batch size, timed for ``steps`` after ``warmup``."""

    name: str
    make: Callable[[], TrainedWorkload]
    schedule: str
    params: dict
    batch_size: int
    steps: int = 0  # set by calibrate()
    warmup: int = 0


DIGITS = {"learning_rate": 0.05, "one_minus_momentum": 0.1, "weight_decay": 0.0}
FASHION = {**DIGITS, "end_factor": 0.01, "decay_fraction": 1.0}
WORKLOADS = {  # name: (workload, schedule, metaparameters), as in the shipped specs
    "digits MLP": (lambda: Digits(DigitsOptions(hidden=[128])), "constant", DIGITS),
    "F-MNIST MLP": (lambda: FashionMNIST(FashionMNISTOptions(model="mlp")), "linear_decay",
                    FASHION),
    "F-MNIST CNN": (lambda: FashionMNIST(FashionMNISTOptions(model="cnn")), "linear_decay",
                    FASHION),
}


def calibrate(case: Case, wl: TrainedWorkload, device: torch.device, seconds: float) -> None:
    """Pick the steps of one measurement: about ``seconds`` of the raw loop (at least 5), from a
    raw run of at least 0.2 s after a warm-up."""
    case.steps, case.warmup = 5, 5
    while True:
        rate = run_raw(case, wl, device, seed=0)
        if case.steps / rate >= 0.2:
            break
        case.steps *= 4
    case.steps = max(5, round(seconds * rate))
    case.warmup = max(3, min(50, case.steps // 10))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_optimizer(model: torch.nn.Module, case: Case, total: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """Momentum SGD (and the linear decay) as a hand-written loop builds them: plain torch."""
    p = case.params
    opt = torch.optim.SGD(model.parameters(), lr=p["learning_rate"],
                          momentum=1.0 - p["one_minus_momentum"])
    if case.schedule == "constant":
        return opt, None
    return opt, torch.optim.lr_scheduler.LinearLR(
        opt, start_factor=1.0, end_factor=p["end_factor"],
        total_iters=round(p["decay_fraction"] * total))


def run_raw(case: Case, wl: TrainedWorkload, device: torch.device, seed: int) -> float:
    """A hand-written PyTorch loop; returns steps/s over the timed window."""
    torch.manual_seed(seed)
    data = wl.data_on(device)
    x, y = data.train_x, data.train_y
    n, b = len(x), case.batch_size
    model = wl.build_model().to(device)
    total = case.warmup + case.steps
    opt, sched = plain_optimizer(model, case, total)
    perm, pos = torch.randperm(n, device=device), 0
    t0 = 0.0
    for step in range(total):
        if step == case.warmup:
            sync(device)
            t0 = clock()
        if pos + b > n:
            perm, pos = torch.randperm(n, device=device), 0
        idx = perm[pos:pos + b] if b <= n else torch.randint(n, (b,), device=device)
        pos += b
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    sync(device)
    return case.steps / (clock() - t0)


def run_ours(case: Case, wl: TrainedWorkload, device: torch.device, seed: int,
             train: Callable = train) -> float:
    """``tuner.train.loop.train``: steps/s between the evaluations at the warm-up's end and the last
    step, minus the last evaluation's time."""
    total = case.warmup + case.steps
    req = TrialRequest(
        params=case.params, optimizer="momentum", schedule=case.schedule,
        batch_size=case.batch_size, max_steps=total, eval_steps=(case.warmup, total),
        target=NEVER, seed=seed, accelerator=device.type,
    )
    marks: list[float] = []
    evals: list[float] = []
    original = type(wl).evaluate

    def timed_evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        t = clock()
        out = original(wl, model, x, y)
        evals.append(clock() - t)
        return out

    wl.evaluate = timed_evaluate  # type: ignore[method-assign]
    try:
        r = train(wl, req, lambda step, metrics: marks.append(clock()) or False)
    finally:
        del wl.evaluate
    assert r.stopped_at_step == total and not r.diverged, r
    return case.steps / (marks[1] - marks[0] - evals[1])


class _Module:
    """Built lazily: importing lightning's Trainer costs time only when it is benchmarked."""

    cls = None

    @classmethod
    def get(cls):  # noqa: ANN206
        if cls.cls is None:
            import lightning as L

            class Module(L.LightningModule):
                def __init__(self, model: torch.nn.Module, case: Case, total: int) -> None:
                    super().__init__()
                    self.model, self.case, self.total = model, case, total

                def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
                    x, y = batch
                    return F.cross_entropy(self.model(x), y)

                def configure_optimizers(self):  # noqa: ANN201
                    opt, sched = plain_optimizer(self, self.case, self.total)
                    if sched is None:
                        return opt
                    return {"optimizer": opt,
                            "lr_scheduler": {"scheduler": sched, "interval": "step"}}

            cls.cls = Module
        return cls.cls


class _Batches(torch.utils.data.Dataset):
    """Whole batches by index: ``dataset[idx_tensor]`` is one gather, no per-sample collate."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx):  # noqa: ANN001, ANN204
        idx = torch.as_tensor(idx, device=self.x.device)
        return self.x[idx], self.y[idx]


def run_trainer(case: Case, wl: TrainedWorkload, device: torch.device, seed: int,
                batched: bool) -> float:
    """Lightning's ``Trainer``; steps/s between global steps ``warmup`` and ``warmup + steps``."""
    import lightning as L
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    torch.manual_seed(seed)
    data = wl.data_on(device)
    total = case.warmup + case.steps
    b = case.batch_size
    if batched:
        ds = _Batches(data.train_x, data.train_y)
        sampler = BatchSampler(RandomSampler(ds, replacement=b > len(ds), num_samples=None
                                             if b <= len(ds) else b), b, drop_last=True)
        loader = DataLoader(ds, sampler=sampler, batch_size=None)
    else:
        loader = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=b,
                            shuffle=True, drop_last=b <= len(data.train_x))
    marks: dict[int, float] = {}

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001, ANN002
            if trainer.global_step in (case.warmup, total):
                sync(device)
                marks[trainer.global_step] = clock()

    module = _Module.get()(wl.build_model(), case, total)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_steps=total, max_epochs=-1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Clock()],
    )
    with contextlib.redirect_stdout(io.StringIO()):  # Lightning's tips and banners
        trainer.fit(module, loader)
    return case.steps / (marks[total] - marks[case.warmup])


def loop_at(rev: str) -> Callable:
    """``train`` from ``tuner/loop.py`` and ``tuner/optim.py`` as they were at git revision
    ``rev``, one from before commit d8a0b10 moved them into tuner/train/ (the workloads' own code
    is today's)."""
    folder = Path(tempfile.mkdtemp())
    modules = {}
    for name in ("optim", "loop"):
        path = folder / f"{name}_at_rev.py"
        path.write_text(subprocess.run(["git", "show", f"{rev}:tuner/{name}.py"], check=True,
                                       capture_output=True, text=True).stdout)
        spec = importlib.util.spec_from_file_location(f"{name}_at_rev", path)
        modules[name] = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(modules[name])  # type: ignore[union-attr]
    loop, optim = modules["loop"], modules["optim"]
    loop.build_optimizer, loop.build_schedule = optim.build_optimizer, optim.build_schedule
    return loop.train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--seconds", type=float, default=0.4,
                    help="length of one measurement (of the raw loop; calibrated per row)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", help="workload names to run (substring match)")
    ap.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    ap.add_argument("--ref", help="also time tuner/loop.py as of this git revision")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time (for analysis on a busy machine)")
    args = ap.parse_args()

    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global clock
        clock = time.process_time
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # our loop sets it (process-wide): the same for every loop
    print(f"device {device}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"reps {args.reps}  clock {args.clock}  load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    runners = {
        "raw": run_raw, "ours": run_ours,
        "trainer": lambda c, w, d, s: run_trainer(c, w, d, s, batched=False),
        "trainer/batched": lambda c, w, d, s: run_trainer(c, w, d, s, batched=True),
    }
    loops = [lp for lp in LOOPS if lp in args.loops]
    if args.ref:
        ref_train = loop_at(args.ref)
        runners[f"ours@{args.ref}"] = lambda c, w, d, s: run_ours(c, w, d, s, ref_train)
        loops.insert(loops.index("ours") + 1 if "ours" in loops else 1, f"ours@{args.ref}")
    rows = []
    for name, (make, schedule, params) in WORKLOADS.items():
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        wl = make()
        wl.data_on(device)
        for b in args.batch_sizes:
            case = Case(name, make, schedule, params, b)
            calibrate(case, wl, device, args.seconds)
            rows.append(measure(case, wl, device, loops, runners, args.reps))
    print_table(rows, loops)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def measure(case: Case, wl: TrainedWorkload, device: torch.device, loops: list[str],
            runners: dict[str, Callable], reps: int) -> tuple:
    """Interleaved repetitions of every loop: (case, median steps/s, median ratio to raw)."""
    got: dict[str, list[float]] = {lp: [] for lp in loops}
    for rep in range(reps):
        for lp in loops[rep % len(loops):] + loops[:rep % len(loops)]:  # each loop goes first
            gc.collect()
            got[lp].append(runners[lp](case, wl, device, rep))
    med = {lp: statistics.median(v) for lp, v in got.items()}
    ratio = {lp: statistics.median(a / r for a, r in zip(got[lp], got["raw"]))
             for lp in loops if "raw" in got}
    print(f"{case.name:12s} B={case.batch_size:<5d} {case.steps:5d} steps  " + "  ".join(
        f"{lp} {med[lp]:8.1f}/s" + (f" ({ratio[lp]:.3f}x)" if lp in ratio else "")
        for lp in loops), flush=True)
    return case, med, ratio


def print_table(rows: list[tuple], loops: list[str]) -> None:
    """The Markdown table of medians and ratios."""
    print()
    head = ["workload", "B", "steps"] + [f"{lp} steps/s" for lp in loops] + \
        [f"{lp}/raw" for lp in loops if lp != "raw"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for case, med, ratio in rows:
        cells = [case.name, str(case.batch_size), str(case.steps)]
        cells += [f"{med[lp]:,.1f}" for lp in loops]
        cells += [f"{ratio[lp]:.3f}" for lp in loops if lp != "raw" and lp in ratio]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
