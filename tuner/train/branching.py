"""Merrill et al.'s branched local critical batch size on trained workloads (``tuner local-cbs``).

The tensor path (:func:`branch`):

One reference run at B0 with the request's metaparameters (the shared loop's set-up: Fabric,
the workload's model, optimizer and data on the device). At each checkpoint the model's and the
optimizer's state are kept; each branch starts from them, trains ``horizon / k`` steps at k B0
with the learning rate of every parameter group times the rule's factor (the optimizer's state,
momentum buffers included, carried over as it is), on its own seeded data order, and is
evaluated on the validation set; then the reference's state is put back and the reference
trains on, undisturbed (its random stream too: each branch is seeded, and torch's random state
is put back), and is evaluated ``horizon`` steps after each checkpoint, at the same
examples as its branches (the run lasts to the last checkpoint plus ``horizon``). What is
compared is the validation loss (the workload's ``loss`` metric, else the target metric when it is minimised: :func:`compared_metric`).

A LightningModule (:class:`tuner.workload.lightning.LightningWorkload`): the reference is one
``Trainer.fit`` of the user's module and DataModule, validated at the checkpoints and ``horizon``
steps after each, with :class:`Snapshot` keeping the module's and optimizers' state at each
checkpoint; each branch is another ``Trainer.fit`` of a module and DataModule built at k B0,
started from that state by :class:`Restore` (learning rates scaled), validated after
``horizon / k`` steps. Compared: the first of :data:`LIGHTNING_LOSSES` the module logs in
``validation_step``, else the target metric when it is minimised.

Both run on one device with a constant schedule (:func:`tuner.run.branching.measure` refuses
the rest).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from tuner.core.branching import LR_RULES, Branch, Checkpoint, LocalCBS
from tuner.core.errors import UsageError
from tuner.core.trial import TrialRequest
from tuner.train.loop import Batches, make_fabric, set_up

if TYPE_CHECKING:
    from tuner.workload.trained import TrainedWorkload  # a type only

#: The branches' data orders: seed + this x (checkpoint index + 1) + factor.
BRANCH_SEED = 7919


#: The validation metrics branches are compared on, in order of preference (else the target
#: metric, when it is minimised): a tensor workload's evaluation, and what LightningModules log.
TENSOR_LOSSES = ("loss",)
LIGHTNING_LOSSES = ("val_loss", "loss", "val/loss")


def compared_metric(request: TrialRequest, metrics: Sequence[str], preferred: Sequence[str]
                    ) -> str:
    """The first of ``preferred`` among the validation ``metrics``, else the target metric
    when it is minimised and among them.

    Raises:
        UsageError: neither.
    """
    for name in preferred:
        if name in metrics:
            return name
    if request.target.direction == "minimize" and request.target.metric in metrics:
        return request.target.metric
    raise UsageError(f"target.metric {request.target.metric!r}: the branches compare a "
                     f"validation loss; allowed: an evaluation that gives one of "
                     f"{', '.join(preferred)} (a LightningModule: logged in validation_step), or "
                     f"a minimised target metric (it gives: {', '.join(sorted(metrics))})")


def branch_seed(seed: int, checkpoint: int, factor: int) -> int:
    """The data-order (and random) seed of the branch at ``factor`` from the ``checkpoint``-th
    checkpoint (0-based) of a reference run seeded ``seed``."""
    return seed + BRANCH_SEED * (checkpoint + 1) + factor


def branch(workload: TrainedWorkload, req: TrialRequest, at: Sequence[int],
           factors: Sequence[int], lr_rule: str, horizon: int) -> LocalCBS:
    """The reference run and its branches (see the module docstring); one device, a constant
    schedule (:func:`tuner.run.branching.measure` refuses the rest)."""
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # denormals slowed a small MLP ~10x on this CPU
    fabric = make_fabric(req.accelerator, req.precision)
    fabric.seed_everything(req.seed, verbose=False)
    data = workload.data_on(fabric.device)
    model, optimizer, _, net, params = set_up(fabric, workload, req)
    precision = fabric.strategy.precision
    train_x = precision.convert_input(data.train_x)
    n = len(train_x)
    base_lr = [g["lr"] for g in optimizer.param_groups]

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            metrics = workload.evaluate(model, data.val_x, data.val_y)
        model.train()
        return metrics

    def train(batches: Batches, steps: int, start: int) -> bool:
        """``steps`` steps; False when a loss was not finite (diverged). The losses are read
        from the device once, at the end (as the loop does, not at every step)."""
        losses = []
        for step in range(start, start + steps):
            idx = batches.next()
            for p in params:
                p.grad = None
            with precision.forward_context():
                loss = precision.convert_output(
                    workload.training_loss(net, train_x[idx], data.train_y[idx], step))
            losses.append(loss.detach())
            fabric.backward(loss)
            optimizer.step()
        return not losses or bool(torch.stack(losses).isfinite().all())

    def loss_now(metric: str) -> float | None:
        v = evaluate()[metric]
        return v if math.isfinite(v) else None

    metric = compared_metric(req, list(evaluate()), TENSOR_LOSSES)
    checkpoints = sorted(set(at))
    ends = {s + horizon: s for s in checkpoints}  # where the reference is compared
    batches = Batches(n, req.batch_size, req.seed, fabric.device)
    found: dict[int, tuple[float, list[Branch]]] = {}
    reference: dict[int, float] = {}
    step = 0
    for e in sorted(set(checkpoints) | set(ends)):
        if not train(batches, e - step, step):
            break  # the reference diverged: no later checkpoint or comparison
        step = e
        if e in ends and ends[e] in found:
            v = loss_now(metric)
            if v is None:
                break
            reference[ends[e]] = v
        if e not in checkpoints:
            continue
        at_loss = loss_now(metric)
        if at_loss is None:
            break
        kept = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
        rng = _rng_state()  # the reference's random stream (dropout), put back after branching
        branches = []
        for k in factors:
            r = LR_RULES[lr_rule](k)
            for g, lr in zip(optimizer.param_groups, base_lr):
                g["lr"] = lr * r
            seed = branch_seed(req.seed, checkpoints.index(e), k)
            torch.manual_seed(seed)
            mine = Batches(n, k * req.batch_size, seed, fabric.device)
            ok = train(mine, horizon // k, e)
            branches.append(Branch(k, k * req.batch_size, base_lr[0] * r, horizon // k,
                                   loss_now(metric) if ok else None))
            model.load_state_dict(kept[0])
            # a copy: the optimizer keeps the loaded state tensors as they are (no copy when
            # dtype and device match) and updates them in place, so the next branch would
            # start from this one's momentum
            optimizer.load_state_dict(copy.deepcopy(kept[1]))  # the reference's lr back too
        _set_rng_state(rng)
        found[e] = (at_loss, branches)
    out = [Checkpoint(s, s * req.batch_size, found[s][0], reference[s], found[s][1])
           for s in checkpoints if s in reference]
    return LocalCBS(req.batch_size, lr_rule, 0.0, horizon,
                    f"trained: one reference run and its branches, compared on the validation "
                    f"{metric} (one seed each: the comparison carries the runs' noise)", out)


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """torch's global random state (CPU, and every CUDA device's)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all()
                                   if torch.cuda.is_available() else [])


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


class Snapshot(Callback):
    """Keeps the module's and its optimizers' state before the update of each step in ``at``
    (what a branch from that step starts from).

    Raises:
        UsageError: (at the fit's start) the module's ``configure_optimizers`` returns a
            learning-rate scheduler, whose state a branch would not carry.
    """

    def __init__(self, at: Sequence[int]) -> None:
        self.at = set(at)
        self.kept: dict[int, tuple[dict, list[dict]]] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            raise UsageError(f"workload.module: {type(pl_module).__name__}.configure_optimizers "
                             "returns a learning-rate scheduler; branches need a constant rate "
                             "(allowed: no scheduler)")

    def learning_rate(self, step: int) -> float:
        """The first parameter group's learning rate at ``step`` (as kept)."""
        return float(self.kept[step][1][0]["param_groups"][0]["lr"])

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step
        if step in self.at and step not in self.kept:
            self.kept[step] = (copy.deepcopy(pl_module.state_dict()),
                               [copy.deepcopy(o.state_dict()) for o in trainer.optimizers])


class Restore(Callback):
    """Starts a fit from a :class:`Snapshot`'s state, every learning rate times ``scale``."""

    def __init__(self, state: tuple[dict, list[dict]], scale: float) -> None:
        self.state, self.scale = state, scale

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.load_state_dict(self.state[0])
        for opt, saved in zip(trainer.optimizers, self.state[1]):
            opt.load_state_dict(copy.deepcopy(saved))  # a copy: see branch()
            for g in opt.param_groups:
                g["lr"] = g["lr"] * self.scale
