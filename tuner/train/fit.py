"""One trial of a user's LightningModule, run by Lightning's own ``Trainer.fit``.

The module and DataModule are the user's, unchanged: Lightning calls every hook, ``self.log``
reduces as it always does (plain values, torchmetrics objects, ``on_step``/``on_epoch``),
``self.global_step``, ``self.current_epoch`` and ``self.trainer.max_steps`` are Lightning's.
What the tool adds is one callback, :class:`TrialCallback`, and two overrides on the user's
instances (never on their classes):

- ``configure_optimizers`` returns the spec's optimizer and per-step schedule
  (:mod:`tuner.train.optim`), unless the spec says ``[optimizer] name = "module"``;
- ``train_dataloader`` returns the user's loader with ``drop_last=True`` (every step is one batch
  of exactly B examples; epochs wrap without a partial batch).

Nothing else changes: validation runs over the user's whole ``val_dataloader``. (One thing is
faster: ``self.log`` skips a device move that moves nothing, :mod:`tuner.train.lightning_compat`.)

The callback validates at the study's evaluation steps (it moves ``trainer.val_check_batch``, the
Trainer's public "validate every n batches", to the next evaluation step after each one, with
``check_val_every_n_epoch=None``), reads every metric the module logged in validation from
``trainer.callback_metrics``, reports them to Optuna at the step, and stops the fit
(``trainer.should_stop``) at the target and every ``[target] also`` goal, at a prune, or when the
metric is not finite. It checks every training batch holds B examples and reads the training loss
in one go every ``CHECK_EVERY`` steps (as :mod:`tuner.train.loop` does): a non-finite or exploding
loss ends the trial as diverged at the step it was computed.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.data import extract_batch_size
from torch.utils.data import DataLoader, IterableDataset

from tuner.core.errors import one_line
from tuner.core.trial import (
    WARMUP_STEPS,
    Reporter,
    TrialRequest,
    TrialResult,
    steady_step_seconds,
)
from tuner.spec.cadence import resolution
from tuner.train import fit_at_target as at_target
from tuner.train.lightning_compat import fast_logging
from tuner.train.loop import CHECK_EVERY, first_bad_loss
from tuner.train.optim import build_optimizer, build_schedule

#: Lightning's per-fit info lines ("GPU available: ...", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES")
#: would be printed once per trial: they go to these loggers.
_CHATTY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                   "lightning.fabric.utilities.seed", "lightning.fabric.utilities.distributed")


class Diverged(Exception):
    """Raised inside the fit when the training loss is not finite or exploded."""


class MissingMetric(KeyError):
    """The target metric was not among the metrics logged in validation."""

    def __init__(self, metric: str, logged: list[str]) -> None:
        super().__init__(f"the target metric {metric!r} was not logged in validation; "
                         f"logged: {', '.join(logged) or 'nothing'}")
        self.logged = logged


class BadBatch(Exception):
    """A training batch without exactly the per-device batch size of examples."""


@dataclass
class Phase:
    """Where the fit is (for pre-flight messages): ``setup`` until the first training batch,
    then ``training_step`` / ``validation_step``."""

    name: str = "setup"


@dataclass
class Outcome:
    """What the callback saw."""

    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    step: int = 0
    reached: bool = False
    steps_to_target: int | None = None
    diverged: bool = False
    pruned: bool = False
    best_metric: float | None = None
    eval_seconds: float = 0.0
    t_warm: float | None = None  # when step WARMUP_STEPS ended (TrialResult.step_seconds)
    eval_at_warm: float = 0.0
    #: ``tuner confirm``: what was measured at the target (TrialResult.at_target), and the
    #: weights there for the test pass after the fit (None: no test split)
    at_target: dict[str, Any] | None = None
    test_state: dict[str, torch.Tensor] | None = None


def validation_metrics(trainer: Trainer, before: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics logged during the validation that just ended: the entries of
    ``trainer.callback_metrics`` that are new or changed since ``before`` (taken when the
    validation started; training metrics do not change during validation)."""
    out: dict[str, float] = {}
    for k, v in trainer.callback_metrics.items():
        if before.get(k) is v:
            continue
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


class TrialCallback(Callback):
    """Evaluate at the study's steps, report, prune, stop at the target, detect divergence."""

    def __init__(self, req: TrialRequest, report: Reporter, per_device_batch: int,
                 phase: Phase | None = None) -> None:
        self.req, self.report, self.per_device = req, report, per_device_batch
        self.phase = phase or Phase()
        self.out = Outcome()
        self._evals = iter(req.eval_steps)
        self.next_eval = next(self._evals)
        self._pending: list[torch.Tensor] = []
        self._first_loss: float | None = None
        self._unmet = list(req.also)
        self._before: dict[str, Any] = {}
        self._t0 = 0.0
        self._better = min if req.target.direction == "minimize" else max

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.val_check_batch = self.next_eval

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.phase.name = "training_step"
        n = extract_batch_size(batch)
        if n != self.per_device:
            raise BadBatch(f"a training batch has {n} examples, not the batch size "
                           f"{self.per_device}")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.out.step += 1
        if self.out.step == WARMUP_STEPS:  # steady-state timing starts here
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.out.t_warm, self.out.eval_at_warm = time.perf_counter(), self.out.eval_seconds
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # manual optimization may return nothing
            self._pending.append(loss.detach().float().reshape(()))
        step = self.out.step
        if self._pending and (len(self._pending) >= CHECK_EVERY
                              or step in (self.next_eval, self.req.max_steps)):
            self._check_losses(trainer)

    def _check_losses(self, trainer: Trainer) -> None:
        stacked = torch.stack(self._pending)
        if trainer.world_size > 1:
            stacked = trainer.strategy.reduce(stacked, reduce_op="mean")
        losses = stacked.tolist()
        self._pending.clear()
        if self._first_loss is None:
            self._first_loss = losses[0]
        bad = first_bad_loss(losses,
                             self.req.divergence_factor * max(abs(self._first_loss), 1e-12))
        if bad is not None:
            self.out.step -= len(losses) - bad
            self.out.diverged = True
            raise Diverged

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.phase.name = "validation_step"
        self._t0 = time.perf_counter()
        self._before = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.phase.name = "training_step"
        step = self.out.step
        if step != self.next_eval:  # a validation Lightning ran on its own (e.g. a stop)
            return
        metrics = validation_metrics(trainer, self._before)
        ddp = trainer.world_size > 1
        if ddp:  # every rank goes on with rank 0's metrics (equal when logged with sync_dist)
            metrics = trainer.strategy.broadcast(metrics, src=0)
        target = self.req.target
        if target.metric not in metrics:
            raise MissingMetric(target.metric, sorted(metrics))
        value = metrics[target.metric]
        stop = trainer.global_rank == 0 and math.isfinite(value) and self.report(step, metrics)
        if ddp:
            stop = trainer.strategy.broadcast(stop, src=0)
        self.out.eval_seconds += time.perf_counter() - self._t0
        self.out.curve.append((step, metrics))
        out = self.out
        if not math.isfinite(value):
            out.diverged = True
            trainer.should_stop = True
            return
        out.best_metric = value if out.best_metric is None else self._better(out.best_metric,
                                                                             value)
        if not out.reached and target.reached(value):
            out.reached, out.steps_to_target = True, step
            if self.req.measure and not ddp:  # tuner confirm: sharpness, the test split after
                t1 = time.perf_counter()
                try:
                    out.at_target = at_target.measure(trainer, pl_module, step, self.req.seed,
                                                      self.req.landscape)
                except Exception as exc:  # the user's training_step: the trial stands
                    out.at_target = at_target.not_measured(step, one_line(exc))
                if at_target.has_test(pl_module, trainer.datamodule):
                    out.test_state = at_target.weights(pl_module)
                out.eval_seconds += time.perf_counter() - t1
        self._unmet = [g for g in self._unmet if not g.met(metrics.get(g.metric))]
        if (out.reached and not self._unmet and not self.req.train_to_budget) or stop:
            out.pruned = stop and not out.reached
            trainer.should_stop = True
            return
        self.next_eval = next(self._evals, self.req.max_steps + 1)
        trainer.val_check_batch = self.next_eval


def with_drop_last(loader: Any) -> Any:
    """The user's training loader, rebuilt with ``drop_last=True`` when it is a plain
    ``DataLoader`` that keeps a partial last batch (every argument else as it was)."""
    if type(loader) is not DataLoader or loader.batch_size is None or loader.drop_last:
        return loader
    kwargs: dict[str, Any] = dict(
        batch_size=loader.batch_size, drop_last=True, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        multiprocessing_context=loader.multiprocessing_context,
        persistent_workers=loader.persistent_workers, pin_memory_device=loader.pin_memory_device)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if not isinstance(loader.dataset, IterableDataset):
        kwargs["sampler"] = loader.sampler
    return DataLoader(loader.dataset, **kwargs)


def override_optimizers(module: LightningModule, req: TrialRequest) -> None:
    """Make ``module.configure_optimizers`` return the spec's optimizer (and its schedule,
    stepped after every optimizer step): on this instance only."""

    def configure_optimizers() -> Any:
        optimizer = build_optimizer(req.optimizer, module, req.params)
        schedule = build_schedule(req.schedule, optimizer, req.params, req.max_steps)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}

    module.configure_optimizers = configure_optimizers  # type: ignore[method-assign]


def force_drop_last(holder: Any) -> None:
    """Wrap ``holder.train_dataloader`` (a DataModule's, or the module's own) so that its
    loader drops a partial last batch: on this instance only."""
    original: Callable[[], Any] = holder.train_dataloader

    def train_dataloader() -> Any:
        return with_drop_last(original())

    holder.train_dataloader = train_dataloader


def quiet_lightning() -> None:
    """Silence Lightning's per-fit info lines and its advice warnings (once per process)."""
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # lightning 2.6's own batch-size extraction on torch >= 2.10 (not the user's code)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def make_trainer(req: TrialRequest, callbacks: list[Callback], gradient_clip_val: float | None,
                 limit_val_batches: int | float = 1.0) -> Trainer:
    """A ``Trainer`` for one trial: the spec's device and precision, ``max_steps`` = the budget,
    validation only when the callback asks for it, no logger, checkpoints or progress bar."""
    return Trainer(
        accelerator=req.accelerator, devices=req.devices, precision=req.precision,
        strategy="ddp" if req.devices > 1 else "auto",
        max_steps=req.max_steps, max_epochs=-1, check_val_every_n_epoch=None,
        val_check_interval=req.eval_steps[0], num_sanity_val_steps=0,
        limit_val_batches=limit_val_batches, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=gradient_clip_val, callbacks=callbacks)


def fit_trial(module: LightningModule, datamodule: Any, req: TrialRequest, report: Reporter,
              *, per_device_batch: int, callbacks: tuple[Callback, ...] = (),
              gradient_clip_val: float | None = None, limit_val_batches: int | float = 1.0,
              module_optimizers: bool = False, phase: Phase | None = None
              ) -> TrialResult:
    """Fit ``module`` (on ``datamodule``, or its own dataloaders when None) as one trial.

    The caller has seeded the RNGs and built both (see :mod:`tuner.workload.lightning`).
    """
    started = time.perf_counter()
    quiet_lightning()
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # denormals slowed a small MLP ~10x on this CPU
    if not module_optimizers:
        override_optimizers(module, req)
    force_drop_last(datamodule if datamodule is not None else module)
    cb = TrialCallback(req, report, per_device_batch, phase)
    trainer = make_trainer(req, [cb, *callbacks], gradient_clip_val, limit_val_batches)
    try:
        with fast_logging():  # self.log without Lightning's per-call device walk
            trainer.fit(module, datamodule=datamodule)
    except Diverged:
        pass
    out = cb.out
    reached = out.reached
    if out.at_target is not None and out.test_state is not None:
        t1 = time.perf_counter()
        try:
            out.at_target["test"] = at_target.test_metrics(trainer, module, datamodule,
                                                           out.test_state)
        except Exception as exc:  # the user's test_step: the trial and its sharpness stand
            out.at_target["test_not_measured"] = one_line(exc)
        out.eval_seconds += time.perf_counter() - t1
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.synchronize(trainer.strategy.root_device)
    t_end = time.perf_counter()
    return TrialResult(
        reached=reached,
        steps_to_target=out.steps_to_target,
        stopped_at_step=out.step,
        diverged=out.diverged,
        pruned=out.pruned,
        examples_seen=out.step * req.batch_size,
        wall_seconds=time.perf_counter() - started,
        best_metric=out.best_metric,
        curve=out.curve,
        steps_after=resolution(req.eval_steps, out.steps_to_target) if reached else None,
        eval_seconds=out.eval_seconds,
        device=str(trainer.strategy.root_device),
        step_seconds=steady_step_seconds(out.t_warm, t_end, out.eval_seconds - out.eval_at_warm,
                                         out.step),
        at_target=out.at_target,
    )
