"""K trials of one study trained at once, as one vectorised model (``[trainer] trials_at_once``).

The K trials' models share an architecture, so their parameters are stacked
(``torch.func.stack_module_state``: leading dim K) and one step of all of them is one forward
pass, ``vmap(functional_call)`` over the stack, each lane (trial) with its own batch, one
backward pass (``torch.autograd.grad``: the lanes share no parameter, so each gets its own
loss's gradient),
and one stacked optimizer update (:mod:`tuner.train.stacked`: each lane its own learning rate, momentum,
weight decay and schedule). Everything else is per lane, exactly as :mod:`tuner.train.loop`
does it for one trial: the seeded initialisation (the workload's ``build_model`` after seeding
with the trial's seed), the seeded data order (:class:`tuner.train.loop.Batches`), the
evaluation steps, the evaluation itself (the workload's ``evaluate`` on a module holding the
lane's parameters: on this CPU one vmapped pass over K lanes was no faster, evaluation being
compute-bound, and slower at K = 16), the target check, the report to the pruner, and divergence. A lane whose
trial ended (reached, missed, diverged, pruned) is refilled at once with the next trial from
the queue (``next_trial``); when the queue is empty it is dropped from the stack, so a finished
trial stops consuming compute.

The same seeded trial gives the same loss trajectory as one trial at a time to float tolerance
(the vectorised kernels round differently), and so the same steps-to-target unless a metric
lands within rounding of the target (``tests/train/test_many.py``).

What runs here: a plain ``torch.nn.Module`` (no LightningModule, no dropout or batch norm,
whose random masks and running statistics would tie lanes together), the default
cross-entropy loss, one device, ``32-true`` precision, an optimizer of
:data:`tuner.train.stacked.STACKED`; the spec refuses the rest
(:meth:`tuner.workload.trained.TrainedWorkload.stacked_refusal`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from tuner.core.trial import WARMUP_STEPS, Reporter, TrialRequest, TrialResult, steady_step_seconds
from tuner.spec.cadence import resolution
from tuner.train.loop import CHECK_EVERY, Batches, first_bad_loss
from tuner.train.stacked import StackedOptimizer, schedule_factor

if TYPE_CHECKING:
    from tuner.workload.trained import TrainedWorkload

#: What ``next_trial`` hands out: (a handle the caller knows the trial by, its request, its
#: reporter), or None when the queue is empty.
Next = Callable[[], "tuple[Any, TrialRequest, Reporter] | None"]
#: Called with a trial's handle and result as soon as it ends.
Done = Callable[[Any, TrialResult], None]


@dataclass
class Lane:
    """One trial in the stack, and its progress (the locals of :func:`tuner.train.loop.train_on`)."""

    handle: Any
    req: TrialRequest
    report: Reporter
    batches: Batches
    started: float
    evals: Any = None  # iterator over the evaluation steps
    next_eval: int = -1
    step: int = 0
    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    eval_seconds: float = 0.0
    best_metric: float | None = None
    first_loss: float | None = None
    reached: bool = False
    diverged: bool = False
    pruned: bool = False
    steps_to_target: int | None = None
    unmet: list[Any] = field(default_factory=list)
    t_warm: float | None = None
    paused_at_warm: float = 0.0  # the stack's seconds not stepping so far, at t_warm
    shared: int = 1  # the most lanes that stepped together while this one did
    ended: bool = False


def lane_model(workload: TrainedWorkload, seed: int, device: torch.device) -> torch.nn.Module:
    """A trial's freshly built model, initialised as :func:`tuner.train.loop.train_on` does it
    (every RNG seeded with the trial's seed, then ``build_model``)."""
    from lightning.fabric.utilities.seed import seed_everything

    seed_everything(seed, verbose=False)
    return workload.build_model().to(device)


def train_many(workload: TrainedWorkload, next_trial: Next, done: Done, k: int,
               device: torch.device | str = "cpu") -> int:
    """Train trials from ``next_trial`` K at a time until it answers None and every lane has
    ended; ``done`` gets each result. Returns how many trials ran."""
    device = torch.device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the one-trial loop (denormals slow a small MLP)
    data = workload.data_on(device)
    train_x, train_y, val_x, val_y = data.train_x, data.train_y, data.val_x, data.val_y

    lanes: list[Lane] = []
    models: list[torch.nn.Module] = []
    queue_empty = False

    def take() -> tuple[Lane, torch.nn.Module] | None:
        nonlocal queue_empty
        got = None if queue_empty else next_trial()
        if got is None:
            queue_empty = True
            return None
        handle, req, report = got
        model = lane_model(workload, req.seed, device)
        lane = Lane(handle, req, report, Batches(len(train_x), req.batch_size, req.seed, device),
                    time.perf_counter(), unmet=list(req.also))
        lane.evals = iter(req.eval_steps)
        lane.next_eval = next(lane.evals)
        return lane, model

    while len(lanes) < k and (got := take()) is not None:
        lanes.append(got[0])
        models.append(got[1])
    if not lanes:
        return 0
    ran = len(lanes)
    params, buffers = stack_module_state(models)  # leaves that require grad, dim 0 the lanes
    opt = StackedOptimizer(lanes[0].req.optimizer, params)
    for i, lane in enumerate(lanes):
        opt.set_lane(i, lane.req.params)
    base = copy.deepcopy(models[0]).to("meta")
    evaluator = models[0]  # a real module; holds one lane's parameters while it is evaluated
    del models

    # the lanes' forward passes as one; the backward is autograd's, through the batched ops
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
    pending: list[torch.Tensor] = []
    paused = 0.0  # seconds the stack did not step: evaluating, telling, claiming, building

    while lanes:
        idx = torch.stack([lane.batches.next() for lane in lanes])
        logits = forward(params, buffers, train_x[idx])
        y = train_y[idx]
        # each lane's mean cross-entropy over its batch (TrainedWorkload.training_loss)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(
            y.shape).mean(1)
        # lanes share no parameter: each gets its own loss's gradient. autograd.grad, not
        # backward(): accumulating into .grad copied every stacked weight's gradient once more
        # (3.3 vs 1.9 ms a step for 4 lanes of the Fashion-MNIST MLP at B = 8 on this CPU)
        grads = torch.autograd.grad(losses.sum(), list(params.values()))
        pending.append(losses.detach())
        opt.step(params, dict(zip(params, grads)),
                 [schedule_factor(ln.req.schedule, ln.req.params, ln.req.max_steps, ln.step)
                  for ln in lanes])
        for lane in lanes:
            lane.step += 1
            lane.shared = max(lane.shared, len(lanes))
            if lane.step == WARMUP_STEPS:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                lane.t_warm, lane.paused_at_warm = time.perf_counter(), paused

        if len(pending) == CHECK_EVERY or any(
                ln.step in (ln.next_eval, ln.req.max_steps) for ln in lanes):
            columns = list(zip(*torch.stack(pending).tolist()))
            pending.clear()
            for lane, losses_k in zip(lanes, columns):
                if lane.first_loss is None:
                    lane.first_loss = losses_k[0]
                bad = first_bad_loss(list(losses_k),
                                     lane.req.divergence_factor * max(lane.first_loss, 1e-12))
                if bad is not None:
                    lane.step -= len(losses_k) - bad
                    lane.diverged = lane.ended = True

        for i, lane in enumerate(lanes):
            if lane.ended or lane.step != lane.next_eval:
                continue
            t0 = time.perf_counter()
            with torch.no_grad():
                for n, p in evaluator.named_parameters():
                    p.copy_(params[n][i])
                evaluator.eval()
                metrics = workload.evaluate(evaluator, val_x, val_y)
                evaluator.train()
            req = lane.req
            value = metrics[req.target.metric]
            stop = math.isfinite(value) and lane.report(lane.step, metrics)
            spent = time.perf_counter() - t0
            lane.eval_seconds += spent
            paused += spent
            lane.curve.append((lane.step, metrics))
            if not math.isfinite(value):
                lane.diverged = lane.ended = True
                continue
            better = min if req.target.direction == "minimize" else max
            lane.best_metric = value if lane.best_metric is None else better(lane.best_metric,
                                                                             value)
            if not lane.reached and req.target.reached(value):
                lane.reached, lane.steps_to_target = True, lane.step
            lane.unmet = [g for g in lane.unmet if not g.met(metrics.get(g.metric))]
            if lane.reached and not lane.unmet and not req.train_to_budget:
                lane.ended = True
            elif stop:
                lane.pruned, lane.ended = not lane.reached, True
            else:
                lane.next_eval = next(lane.evals, -1)

        for lane in lanes:
            lane.ended = lane.ended or lane.step >= lane.req.max_steps
        if not any(lane.ended for lane in lanes):
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        keep: list[int] = []
        for i, lane in enumerate(lanes):
            if not lane.ended:
                keep.append(i)
                continue
            done(lane.handle, _result(lane, device, paused + time.perf_counter() - t0))
            got = take()
            if got is None:
                continue
            lanes[i], model = got
            with torch.no_grad():
                for n, p in model.named_parameters():
                    params[n][i].copy_(p)
            opt.set_lane(i, lanes[i].req.params)
            keep.append(i)
            ran += 1
        if len(keep) < len(lanes):
            lanes = [lanes[i] for i in keep]
            if lanes:
                at = torch.tensor(keep, device=device)
                params = {n: p.detach().index_select(0, at).requires_grad_()
                          for n, p in params.items()}
                buffers = {n: b.index_select(0, at) for n, b in buffers.items()}
                opt.keep(keep)
        paused += time.perf_counter() - t0
    return ran


def _result(lane: Lane, device: torch.device, paused: float) -> TrialResult:
    """The lane's :class:`TrialResult`, as :func:`tuner.train.loop.train_on` fills it; its
    ``step_seconds`` is the wall time of one step of the whole stack (the ``paused`` seconds
    when it did not step left out: every lane's evaluations, results told, trials claimed), what
    this trial's steps cost while it shared the device."""
    req, t_end = lane.req, time.perf_counter()
    step = lane.step
    return TrialResult(
        reached=lane.reached,
        steps_to_target=lane.steps_to_target,
        stopped_at_step=step,
        diverged=lane.diverged,
        pruned=lane.pruned,
        examples_seen=step * req.batch_size,
        wall_seconds=t_end - lane.started,
        best_metric=lane.best_metric,
        curve=lane.curve,
        steps_after=resolution(req.eval_steps, lane.steps_to_target) if lane.reached else None,
        eval_seconds=lane.eval_seconds,
        device=str(device),
        step_seconds=steady_step_seconds(lane.t_warm, t_end, paused - lane.paused_at_warm, step),
        trials_at_once=lane.shared,
    )
