"""The training loop: one trial of a trained workload, readable top to bottom.

Lightning Fabric runs it (CPU here, a GPU when present; precision and strategies from Lightning),
without the per-step hooks, logging and collate of ``Trainer``. The data set lives as tensors on the
training device; a batch is an index into a seeded permutation (reshuffled every epoch).
Validation runs at the study's evaluation steps; the trial stops at the first evaluation that
reaches the target (and every ``[target] also`` goal), at a non-finite or exploding loss
(diverged), when the reporter says prune, or at the budget.

Speed (``benchmarks/loop_speed.py``): a step costs what a hand-written PyTorch step costs.
- The forward pass calls the module Fabric set up (DDP's wrapper under DDP) inside the precision's
  forward context, not through Fabric's per-call wrapper, which re-checks the strategy on every
  call (~50 us a step, 10-15 % of a small MLP's step on this CPU). ``fabric.backward`` and
  Fabric's optimizer still do every strategy's and precision's backward and step.
- Gradients are reset by setting them to None directly: ``optimizer.zero_grad(set_to_none=True)``
  does the same inside a profiler span (~10 us a step).
- The divergence check does not read the loss at every step (on a GPU each read waits for the
  device): the losses are read in one go every ``CHECK_EVERY`` steps and before every
  evaluation, and the first bad one sets the step the trial stopped at, exactly as a check at
  every step would; a diverged trial runs at most ``CHECK_EVERY - 1`` steps past it, unrecorded.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from lightning import LightningModule

from tuner.core.trial import (
    WARMUP_STEPS,
    Reporter,
    TrialRequest,
    TrialResult,
    steady_step_seconds,
)
from tuner.spec.cadence import resolution
from tuner.train.optim import build_optimizer, build_schedule
from tuner.train.sharpness import measure_at_target

if TYPE_CHECKING:
    from tuner.workload.trained import (
        TrainedWorkload,  # a type only (not a runtime import)
    )


#: Steps between divergence checks (each reads the pending losses from the device at once).
CHECK_EVERY = 32


def first_bad_loss(losses: list[float], bound: float) -> int | None:
    """The index of the first loss that is not finite or exceeds ``bound`` (diverged), or
    None."""
    return next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > bound), None)


class Batches:
    """The training batches' indices: B a step from a seeded permutation of the ``n`` examples,
    wrapping into a fresh permutation at each epoch's end (every batch holds B examples)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n, self.batch_size, self.device = n, batch_size, device
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen).to(device)
        self.pos = 0

    def next(self) -> torch.Tensor:
        """The next batch's B indices."""
        n, b = self.n, self.batch_size
        if self.pos + b <= n:
            self.pos += b
            return self.perm[self.pos - b:self.pos]
        parts = [self.perm[self.pos:]]
        need = b - (n - self.pos)
        while need > 0:
            self.perm = torch.randperm(n, generator=self.gen).to(self.device)
            parts.append(self.perm[:need])
            self.pos = min(need, n)
            need -= self.pos
        return torch.cat(parts)


def make_fabric(accelerator: str, precision: str):  # noqa: ANN201 - lightning type
    """A single-device Fabric. ``auto`` picks a GPU when there is one."""
    from lightning.fabric import Fabric

    return Fabric(accelerator=accelerator, devices=1, precision=precision, loggers=[])


def set_up(fabric, workload: TrainedWorkload, req: TrialRequest  # noqa: ANN001 - Fabric
           ) -> tuple[Any, Any, Any, torch.nn.Module, list[torch.Tensor]]:
    """A freshly built model with the request's optimizer and schedule, set up on ``fabric``
    and in train mode: ``(model, optimizer, schedule, net, params)``. ``net`` is what the
    training step calls: what Fabric's wrapper calls (see the module docstring), all of it
    inside the precision's context as Trainer runs a training_step; a LightningModule keeps the
    wrapper, which routes its training_step through DDP's forward. Evaluation goes through
    ``model``, the wrapper. ``params``: every parameter the optimizer updates."""
    model = workload.build_model()
    optimizer = build_optimizer(req.optimizer, model, req.params)
    schedule = build_schedule(req.schedule, optimizer, req.params, req.max_steps)
    model, optimizer = fabric.setup(model, optimizer)
    model.train()
    net = model if isinstance(model.module, LightningModule) else model._forward_module
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return model, optimizer, schedule, net, params


def train_on(fabric, workload: TrainedWorkload, req: TrialRequest,  # noqa: ANN001 - Fabric
             report: Reporter) -> TrialResult:
    """The loop, on a launched Fabric. Under DDP (world size > 1) every rank runs it: each takes
    its shard of the global batch, losses are averaged across ranks before the divergence check,
    and rank 0 alone evaluates and reports, then broadcasts what to do."""
    started = time.perf_counter()
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # denormals slowed a small MLP ~10x on this CPU
    rank, world = fabric.global_rank, fabric.world_size
    shard = req.batch_size // world
    fabric.seed_everything(req.seed, verbose=False)

    device = fabric.device
    data = workload.data_on(device)
    train_x, train_y, val_x, val_y = data.train_x, data.train_y, data.val_x, data.val_y
    n = len(train_x)

    model, optimizer, schedule, net, params = set_up(fabric, workload, req)
    # The training data is converted to the precision's input type once.
    precision = fabric.strategy.precision
    train_x = precision.convert_input(train_x)

    batches = Batches(n, req.batch_size, req.seed, device)
    eval_at = iter(req.eval_steps)
    next_eval = next(eval_at)

    curve: list[tuple[int, dict[str, float]]] = []
    eval_seconds = 0.0
    best_metric: float | None = None
    first_loss: float | None = None
    pending: list[torch.Tensor] = []  # losses of the steps since the last divergence check
    reached = diverged = pruned = False
    steps_to_target: int | None = None
    unmet = list(req.also)  # [target] also goals not met yet
    step = 0
    t_warm: float | None = None
    eval_at_warm = 0.0
    at_target: dict[str, Any] | None = None
    while step < req.max_steps:
        idx = batches.next()
        if world > 1:
            idx = idx[rank * shard:(rank + 1) * shard]

        with precision.forward_context():
            loss = precision.convert_output(
                workload.training_loss(net, train_x[idx], train_y[idx], step))
        pending.append(loss.detach())
        for p in params:  # optimizer.zero_grad(set_to_none=True), without its profiler span
            p.grad = None
        fabric.backward(loss)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        step += 1
        if step == WARMUP_STEPS:  # steady-state timing starts here (TrialResult.step_seconds)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_warm, eval_at_warm = time.perf_counter(), eval_seconds

        # Diverged: a loss that is not finite or above divergence_factor x the first loss. The
        # step it was computed at is where the trial stopped (its update is not counted).
        if len(pending) == CHECK_EVERY or step in (next_eval, req.max_steps):
            stacked = torch.stack(pending)
            if world > 1:  # every rank must agree: the mean loss over the global batch
                stacked = fabric.all_reduce(stacked, reduce_op="mean")
            losses = stacked.tolist()
            pending.clear()
            if first_loss is None:
                first_loss = losses[0]
            bad = first_bad_loss(losses, req.divergence_factor * max(first_loss, 1e-12))
            if bad is not None:
                step -= len(losses) - bad
                diverged = True
                break

        if step == next_eval:
            t0 = time.perf_counter()
            metrics: dict[str, float] = {}
            stop = False
            if rank == 0:
                model.eval()
                with torch.no_grad():  # under DDP, the plain module: no collectives
                    metrics = workload.evaluate(model.module if world > 1 else model, val_x,
                                                val_y)
                model.train()
                value = metrics[req.target.metric]
                stop = math.isfinite(value) and report(step, metrics)
            if world > 1:
                metrics, stop = fabric.broadcast((metrics, stop), src=0)
            eval_seconds += time.perf_counter() - t0
            curve.append((step, metrics))
            value = metrics[req.target.metric]
            if not math.isfinite(value):
                diverged = True
                break
            better = min if req.target.direction == "minimize" else max
            best_metric = value if best_metric is None else better(best_metric, value)
            if not reached and req.target.reached(value):
                reached, steps_to_target = True, step
                if req.measure and world == 1:  # tuner confirm: test split and sharpness
                    t1 = time.perf_counter()
                    at_target = measure_at_target(workload, model, net, train_x, train_y, step,
                                                  req.seed, req.landscape)
                    eval_seconds += time.perf_counter() - t1
            unmet = [g for g in unmet if not g.met(metrics.get(g.metric))]
            if reached and not unmet and not req.train_to_budget:  # target and every goal met
                break
            if stop:
                pruned = not reached
                break
            next_eval = next(eval_at, -1)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_end = time.perf_counter()
    return TrialResult(
        reached=reached,
        steps_to_target=steps_to_target,
        stopped_at_step=step,
        diverged=diverged,
        pruned=pruned,
        examples_seen=step * req.batch_size,
        wall_seconds=time.perf_counter() - started,
        best_metric=best_metric,
        curve=curve,
        steps_after=resolution(req.eval_steps, steps_to_target) if reached else None,
        eval_seconds=eval_seconds,
        device=str(device),
        step_seconds=steady_step_seconds(t_warm, t_end, eval_seconds - eval_at_warm, step),
        at_target=at_target,
    )
