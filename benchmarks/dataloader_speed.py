"""Training steps per second over a DataLoader: a raw PyTorch loop vs our LightningModule path.

The same small CNN, the same map-style Dataset (Fashion-MNIST images converted per item in
``__getitem__``, as a torchvision dataset does), the same ``DataLoader(batch_size=B,
shuffle=True, drop_last=True)``, the same SGD, in the same process:

- raw: ``for x, y in loader``: forward, cross-entropy, ``zero_grad``, ``backward``, ``step``.
- ours: :func:`tuner.train.fit.fit_trial`, the path every ``[workload] module = ...`` trial runs:
  ``Trainer.fit`` of a LightningModule (``training_step`` returns the loss, ``self.log`` of the
  training loss at every step) with the trial callback (the batch-size check, the divergence
  check, validation only at the last step).
- ours/no-log: ours with a module whose ``training_step`` does not call ``self.log``
  (Lightning's per-step logging cost is the difference).
- ours/lightning-log: ours with ``self.log`` as Lightning runs it (``tuner.train.lightning_compat``
  off: every logged value walks its metric's state to move it where it already is).
- ours/4-logs, ours/4-logs/lightning-log: the same two with a module that logs four values a step
  (loss, accuracy per step and per epoch, the largest logit, examples seen), as many research
  modules do.
- trainer: the same LightningModule under a plain ``Trainer`` (logger, checkpoints, progress bar
  and model summary off, no callback of ours): Lightning's own cost.

``--log-cost`` also times each ``self.log`` call itself (ours/4-logs, with and without the
shortcut, interleaved): milliseconds per call, median over repetitions.

Each measurement times ``steps`` training steps after ``warmup`` steps, from the end of the
warm-up's last batch to the end of the last timed batch (set-up, teardown and validation
excluded). Repetitions are interleaved (each loop takes its turn first); a ratio is the median
over repetitions of (loop / raw in the same repetition).

    .venv/bin/python benchmarks/dataloader_speed.py [--reps 5] [--batch-sizes 32 512] [--clock cpu]
        [--log-cost] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tuner.core.trial import Target, TrialRequest
from tuner.train import lightning_compat
from tuner.train.fit import fit_trial, quiet_lightning
from workloads.fashion_mnist import FashionMNIST, FashionMNISTOptions

clock = time.perf_counter
#: where the model trains (``--device``); the loaders stay on the CPU, as a user's do
DEVICE = torch.device("cpu")
NEVER = Target("val_loss", -1.0, "minimize")


class Images(Dataset):
    """uint8 images -> normalised float tensors, one item at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pixels = (x.reshape(-1, 1, 28, 28) * 0.3530 + 0.2860) * 255  # back to the file's bytes
        self.x, self.y = pixels.round().clamp(0, 255).to(torch.uint8), y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.x[i].float() / 255.0 - 0.2860) / 0.3530, self.y[i]


def cnn() -> nn.Module:
    """A small CNN: two 3x3 conv layers (16, 32 channels) with max-pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


class LitCNN(L.LightningModule):
    """The CNN as a user writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = cnn()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class LitCNNNoLog(LitCNN):
    """The same module without ``self.log`` in ``training_step`` (Lightning's logging cost)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)


class LitCNN4Logs(LitCNN):
    """The same module logging four values a step."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=True,
                 on_epoch=True)
        self.log("max_logit", logits.max(), on_step=False, on_epoch=True, reduce_fx="max")
        self.log("seen", float(len(y)), on_step=False, on_epoch=True, reduce_fx="sum")
        return loss


class Data(L.LightningDataModule):
    """The benchmark's loaders."""

    def __init__(self, train: Dataset, val: Dataset, batch_size: int) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=256)


class Timer(L.Callback):
    """Seconds from the end of batch ``warmup`` to the end of batch ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.n, self.t0, self.seconds = warmup, steps, 0, 0.0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.n += 1
        if self.n == self.warmup:
            self.t0 = now()
        elif self.n == self.warmup + self.steps:
            self.seconds = now() - self.t0


def now() -> float:
    """The clock, once the device has finished what was queued (CUDA runs asynchronously)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return clock()


def run_raw(data: Data, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    model = cnn().to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n, t0 = 0, 0.0
    while True:
        for x, y in data.train_dataloader():
            x, y = x.to(DEVICE), y.to(DEVICE)  # what Lightning does with each batch
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += 1
            if n == warmup:
                t0 = now()
            elif n == warmup + steps:
                return now() - t0


def run_ours(data: Data, warmup: int, steps: int, module: type[LitCNN] = LitCNN) -> float:
    torch.manual_seed(0)
    timer = Timer(warmup, steps)
    total = warmup + steps
    req = TrialRequest(params={"learning_rate": 0.01, "one_minus_momentum": 0.1,
                               "weight_decay": 0.0}, optimizer="momentum", schedule="constant",
                       batch_size=data.batch_size, max_steps=total, eval_steps=(total,),
                       target=NEVER, seed=0, accelerator=DEVICE.type)
    fit_trial(module(), data, req, lambda s, m: False, per_device_batch=data.batch_size,
              callbacks=(timer,))
    return timer.seconds


def run_trainer(data: Data, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    timer = Timer(warmup, steps)
    trainer = L.Trainer(accelerator=DEVICE.type, devices=1, max_steps=warmup + steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer])
    trainer.fit(LitCNN(), datamodule=data)
    return timer.seconds


def run_ours_nolog(data: Data, warmup: int, steps: int) -> float:
    return run_ours(data, warmup, steps, LitCNNNoLog)


def lightning_log(run: Callable[[Data, int, int], float]) -> Callable[[Data, int, int], float]:
    """``run`` with ``self.log`` as Lightning runs it (tuner.train.lightning_compat off)."""
    def off(data: Data, warmup: int, steps: int) -> float:
        lightning_compat.ACTIVE, active = False, lightning_compat.ACTIVE
        try:
            return run(data, warmup, steps)
        finally:
            lightning_compat.ACTIVE = active
    return off


def run_ours_4logs(data: Data, warmup: int, steps: int) -> float:
    return run_ours(data, warmup, steps, LitCNN4Logs)


LOOPS: dict[str, Callable[[Data, int, int], float]] = {
    "raw": run_raw, "ours": run_ours, "trainer": run_trainer, "ours/no-log": run_ours_nolog,
    "ours/lightning-log": lightning_log(run_ours), "ours/4-logs": run_ours_4logs,
    "ours/4-logs/lightning-log": lightning_log(run_ours_4logs)}


def log_cost(data: Data, warmup: int, steps: int, reps: int) -> dict[bool, list[float]]:
    """Milliseconds per ``self.log`` call in ours/4-logs (``warmup + steps`` steps a fit), with
    the shortcut on (True) and off, interleaved, one value per fit."""
    timed = [0.0, 0]
    log = L.LightningModule.log

    def counted(*args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        log(*args, **kwargs)
        timed[0] += time.perf_counter() - t0
        timed[1] += 1

    out: dict[bool, list[float]] = {True: [], False: []}
    L.LightningModule.log = counted  # type: ignore[method-assign]
    try:
        for _ in range(reps):
            for on in (True, False):
                timed[:] = [0.0, 0]
                (run_ours_4logs if on else lightning_log(run_ours_4logs))(data, warmup, steps)
                out[on].append(1e3 * timed[0] / timed[1])
    finally:
        L.LightningModule.log = log  # type: ignore[method-assign]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--examples", type=int, default=8192, help="training images used")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (robust to other processes' load)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timed with synchronisation)")
    ap.add_argument("--log-cost", action="store_true",
                    help="also time each self.log call, with and without the shortcut")
    args = ap.parse_args()
    global clock, DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and args.clock == "cpu":
        ap.error("--clock cpu: this process's CPU time leaves the GPU's out; allowed with "
                 "--device cuda: --clock wall")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    quiet_lightning()
    torch.set_flush_denormal(True)
    fm = FashionMNIST(FashionMNISTOptions(model="cnn", val_size=1000))
    d = fm.data()
    train = Images(d.train_x[:args.examples], d.train_y[:args.examples])
    val = Images(d.val_x[:256], d.val_y[:256])
    print(f"device {DEVICE}"
          + (f" ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda" else "")
          + f", torch {torch.__version__}, lightning {L.__version__}, threads "
          f"{torch.get_num_threads()}, {args.examples} training images, {args.reps} reps, "
          f"{args.clock} clock, tuner.train.lightning_compat "
          f"{'on' if lightning_compat.ACTIVE else 'OFF (untested Lightning): no shortcut'}")
    others = [name for name in LOOPS if name != "raw"]
    print(" | ".join(["B", "steps", "raw steps/s", *(f"{n}/raw" for n in others),
                      "per rep: ours/raw"]))
    for b in args.batch_sizes:
        steps = max(20, 12000 // b)  # about a second of the raw loop here
        warmup = max(5, steps // 10)
        data = Data(train, val, b)
        ratios: dict[str, list[float]] = {name: [] for name in others}
        raw_rates: list[float] = []
        names = list(LOOPS)
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            secs = {name: LOOPS[name](data, warmup, steps) for name in order}
            raw_rates.append(steps / secs["raw"])
            for name in ratios:
                ratios[name].append(secs["raw"] / secs[name])
        print(" | ".join([str(b), str(steps), f"{statistics.median(raw_rates):.1f}",
                          *(f"{statistics.median(ratios[n]):.2f}" for n in others),
                          ", ".join(f"{r:.2f}" for r in ratios["ours"])]), flush=True)
        for name in ("ours", "ours/4-logs"):  # the shortcut's gain, paired within each rep
            gains = [a / b for a, b in zip(ratios[name], ratios[f"{name}/lightning-log"])]
            print(f"  B = {b}: {name} with / without tuner.train.lightning_compat: median "
                  f"{statistics.median(gains):.3f}x (per rep: "
                  f"{', '.join(f'{g:.2f}' for g in gains)})", flush=True)
        if args.log_cost:
            ms = log_cost(data, warmup, steps, args.reps)
            print(f"  B = {b}: ms per self.log call (wall), shortcut on "
                  f"{statistics.median(ms[True]):.3f} / off {statistics.median(ms[False]):.3f} "
                  f"(per rep on: {', '.join(f'{x:.3f}' for x in ms[True])}; off: "
                  f"{', '.join(f'{x:.3f}' for x in ms[False])})", flush=True)


if __name__ == "__main__":
    main()
