"""The gradient noise scale of a trained workload, measured along one training run.

McCandlish et al.'s two-batch estimator (:func:`tuner.core.predict.two_batch`): at each
measured step, the batch of B examples about to be trained on is split into ``k`` micro-batches
of b = B / k; their gradients g_1..g_k (at the current parameters) give |G_b|^2 as the mean of
|g_j|^2 and |G_B|^2 as |mean g_j|^2. Under DDP (tensor path, ``[trainer] devices`` = k) the
micro-batches are the ranks' shards: each rank's own gradient and their all-reduced mean (one
all-reduce of the gradients, as DDP's backward would do, and one of two scalars). The paths
measure before the step's update:

- tensor path (:func:`measure`): a lean copy of :mod:`tuner.train.loop` (same batches, optimizer,
  schedule and device); at a measured step the update uses the mean of the micro-batch gradients,
  which is the batch's own gradient (the loss is a mean over examples), so the measurement costs
  no extra forward or backward pass;
- a user's LightningModule (:class:`NoiseProbe`): a callback in Lightning's own ``Trainer.fit``
  that, at a measured step's ``on_train_batch_start``, runs ``training_step`` on each micro-batch
  with ``self.log`` silenced and takes its gradients with ``torch.autograd.grad`` (nothing is
  accumulated into ``.grad``; the fit's own update follows unchanged).

Layers whose output depends on the batch as a whole (batch norm) see micro-batches of b: the
estimate is then of the gradient at b, the usual caveat of this estimator.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.nn.parallel import DistributedDataParallel
from lightning_utilities.core.apply_func import apply_to_collection

from tuner.core.predict import two_batch
from tuner.core.trial import TrialRequest
from tuner.train.loop import Batches, make_fabric, set_up
from tuner.train.module_step import logging_silenced, step_loss

if TYPE_CHECKING:
    from tuner.workload.trained import TrainedWorkload

#: (step, |G|^2, tr(Sigma)) of one measured point.
Raw = tuple[int, float, float]


def sq_norm(grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """The squared norm of a gradient given per parameter (None: no gradient), in float32."""
    return sum((g.float() * g.float()).sum() for g in grads if g is not None)  # type: ignore[return-value]


def micro_gradients(losses: Iterable[torch.Tensor], params: list[torch.Tensor], k: int
                    ) -> tuple[list[float], list[torch.Tensor | None], torch.Tensor]:
    """The ``k`` micro-batches' losses in turn -> their gradients' squared norms, their mean
    gradient per parameter (the batch's gradient; None where no loss reached a parameter) and
    their mean loss. Gradients come from ``torch.autograd.grad``: nothing touches ``.grad``."""
    micro_sq, detached = [], []
    mean: list[torch.Tensor | None] = [None] * len(params)
    for loss in losses:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        micro_sq.append(sq_norm(grads))
        detached.append(loss.detach())
        mean = [m if g is None else g / k if m is None else m + g / k
                for m, g in zip(mean, grads)]
    return torch.stack(micro_sq).tolist(), mean, torch.stack(detached).mean()


def estimate(micro_sq: list[float], mean: list[torch.Tensor | None], batch_size: int, k: int
             ) -> tuple[float, float]:
    """``(|G|^2, tr(Sigma))`` from the ``k`` micro-batches' squared gradient norms and their
    mean gradient (the batch's gradient)."""
    return two_batch(batch_size // k, batch_size, sum(micro_sq) / k, float(sq_norm(mean)))


def measure(workload: TrainedWorkload, req: TrialRequest, at: Sequence[int], k: int
            ) -> tuple[list[Raw], int, int | None]:
    """Train ``req.max_steps`` steps with ``req``'s metaparameters; at each step in ``at``
    (before its update) measure |G|^2 and tr(Sigma): with ``k`` micro-batches on one device,
    or from the per-rank and all-reduced gradients under DDP (``req.devices`` = ``k`` rank
    processes, Fabric's ``ddp_spawn``; rank 0's result).
    ``(points, steps run, step whose loss was not finite or None)``."""
    if req.devices == 1:
        return measure_on(make_fabric(req.accelerator, req.precision), workload, req, at, k)
    import pickle

    from lightning.fabric import Fabric  # heavy: lightning, only when needed

    fabric = Fabric(accelerator=req.accelerator, devices=req.devices, strategy="ddp_spawn",
                    precision=req.precision, loggers=[])
    # pickled: Fabric's launcher walks its arguments and refuses frozen dataclasses
    return fabric.launch(_rank_main, pickle.dumps((workload, req, list(at))))


def _rank_main(fabric: Any, job: bytes) -> tuple[list[Raw], int, int | None]:
    import pickle

    import torch.distributed

    workload, req, at = pickle.loads(job)
    out = measure_on(fabric, workload, req, at, fabric.world_size)
    fabric.barrier()  # leave together (see tuner.train.ddp)
    torch.distributed.destroy_process_group()
    return out


def measure_on(fabric: Any, workload: TrainedWorkload, req: TrialRequest, at: Sequence[int],
               k: int) -> tuple[list[Raw], int, int | None]:
    """:func:`measure` on a launched Fabric: one device (``k`` micro-batches), or this rank
    of ``fabric.world_size`` (``k`` = the world size: each rank's shard is a micro-batch).

    Under DDP a measured step's forward and backward go through the plain module (no DDP
    reducer), the rank takes its shard's gradient with ``torch.autograd.grad``, and one
    all-reduce of the gradients (what DDP's backward would do) plus one of two scalars give
    the batch's gradient and the mean of the ranks' squared norms."""
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # denormals slowed a small MLP ~10x on this CPU
    rank, world = fabric.global_rank, fabric.world_size
    shard = req.batch_size // world
    fabric.seed_everything(req.seed, verbose=False)
    data = workload.data_on(fabric.device)
    _, optimizer, schedule, net, params = set_up(fabric, workload, req)
    plain = net.module if isinstance(net, DistributedDataParallel) else net
    precision = fabric.strategy.precision
    train_x = precision.convert_input(data.train_x)
    batches = Batches(len(train_x), req.batch_size, req.seed, fabric.device)
    todo = set(at)
    out: list[Raw] = []
    for step in range(req.max_steps):
        idx = batches.next()
        if world > 1:
            idx = idx[rank * shard:(rank + 1) * shard]
        x, y = train_x[idx], data.train_y[idx]
        for p in params:
            p.grad = None
        if step in todo and world > 1:
            with precision.forward_context():
                loss = precision.convert_output(workload.training_loss(plain, x, y, step))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            mean, local_sq, loss = all_reduced(fabric, grads, sq_norm(grads), loss.detach())
            if not math.isfinite(float(loss)):
                return out, step, step
            for p, g in zip(params, mean):
                p.grad = g
            out.append((step, *two_batch(shard, req.batch_size, local_sq, float(sq_norm(mean)))))
        elif step in todo:
            def losses() -> Iterator[torch.Tensor]:
                for mx, my in split((x, y), k):
                    with precision.forward_context():
                        loss = precision.convert_output(workload.training_loss(net, mx, my, step))
                    yield loss

            micro_sq, mean, loss = micro_gradients(losses(), params, k)
            if not math.isfinite(float(loss)):
                return out, step, step
            for p, g in zip(params, mean):
                p.grad = g  # the update uses the batch's gradient: no extra pass
            out.append((step, *estimate(micro_sq, mean, req.batch_size, k)))
        else:
            with precision.forward_context():
                loss = precision.convert_output(workload.training_loss(net, x, y, step))
            fabric.backward(loss)
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return out, req.max_steps, None


def all_reduced(fabric: Any, grads: Sequence[torch.Tensor | None], local_sq: torch.Tensor,
                loss: torch.Tensor) -> tuple[list[torch.Tensor | None], float, torch.Tensor]:
    """The ranks' mean gradient (one all-reduce of the flattened gradients, as DDP's), the
    mean of their squared norms and their mean loss (one all-reduce of two scalars)."""
    present = [g for g in grads if g is not None]
    flat = fabric.all_reduce(torch.cat([g.reshape(-1) for g in present]), reduce_op="mean")
    pair = fabric.all_reduce(torch.stack([local_sq.float(), loss.float()]), reduce_op="mean")
    mean: list[torch.Tensor | None] = []
    pos = 0
    for g in grads:
        if g is None:
            mean.append(None)
            continue
        mean.append(flat[pos:pos + g.numel()].view_as(g).to(g.dtype))
        pos += g.numel()
    return mean, float(pair[0]), pair[1]


def split(batch: Any, k: int) -> list[Any]:
    """A batch (tensors, or dicts / lists / tuples of them, split along dimension 0) as ``k``
    equal micro-batches; anything else is passed to each micro-batch whole."""
    def part(j: int) -> Any:
        return apply_to_collection(
            batch, torch.Tensor, lambda t: t[j * (len(t) // k):(j + 1) * (len(t) // k)])
    return [part(j) for j in range(k)]


class NoiseProbe(Callback):
    """Measures the two-batch estimator at chosen steps of a ``Trainer.fit`` (see the module
    docstring): ``points`` collects ``(step, |G|^2, tr(Sigma))``."""

    def __init__(self, at: Sequence[int], k: int, per_device_batch: int) -> None:
        self.at, self.k, self.batch_size = set(at), k, per_device_batch
        self.points: list[Raw] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """At a measured step: the micro-batches' gradients at the current parameters."""
        step = trainer.global_step
        if step not in self.at:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]

        losses = (step_loss(pl_module, micro, batch_idx) for micro in split(batch, self.k))
        with logging_silenced(pl_module), torch.enable_grad():
            micro_sq, mean, _ = micro_gradients(losses, params, self.k)
        self.points.append((step, *estimate(micro_sq, mean, self.batch_size, self.k)))
