"""Sharpness: the top eigenvalue of the Hessian of the training loss, by power iteration on
Hessian-vector products (autograd's double backward through the workload's own training loss),
on a fixed training subset. Keskar et al. (2017) call large-batch minima sharp; Shallue et al.
and Grosse found no such effect at equal validation error. ``tuner confirm`` measures it at the
step a confirmation trial reached the target."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from tuner.train.landscape import slices

#: Training examples the Hessian is taken over (the first ones: the same for every trial), and
#: the power iteration's budget and relative tolerance.
EXAMPLES = 1024
ITERATIONS = 30
TOLERANCE = 1e-3


def top_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor],
                   iterations: int = ITERATIONS, tol: float = TOLERANCE, seed: int = 0
                   ) -> tuple[float, int]:
    """The largest-magnitude eigenvalue of the Hessian of ``loss_fn()`` in ``params`` and the
    iterations used (power iteration from a seeded random direction; it stops once the estimate
    changes by less than ``tol`` relative)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in params]
    norm = math.sqrt(sum(float((x * x).sum()) for x in v))
    v = [x / norm for x in v]
    lam = math.nan
    for i in range(1, iterations + 1):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=v)
        new = sum(float((h * x).sum()) for h, x in zip(hv, v))  # Rayleigh quotient v'Hv
        norm = math.sqrt(sum(float((h * h).sum()) for h in hv))
        if norm == 0 or not math.isfinite(norm):
            return new, i
        v = [h.detach() / norm for h in hv]
        if math.isfinite(lam) and abs(new - lam) <= tol * abs(new):
            return new, i
        lam = new
    return lam, iterations


def measure_at_target(workload: Any, model: torch.nn.Module, net: torch.nn.Module,
                      train_x: torch.Tensor, train_y: torch.Tensor, step: int, seed: int,
                      landscape: bool = False) -> dict[str, Any]:
    """What ``tuner confirm`` records at the step a trial reached the target: the test metrics
    (``None`` when the workload has no test split) and the sharpness on the first
    :data:`EXAMPLES` training examples (``model``: what evaluation calls; ``net``: what the
    training loss calls); with ``landscape``, also the loss-landscape slices there
    (:mod:`tuner.train.landscape`, on the same examples). The model is left as it was (train
    mode, no grads)."""
    out: dict[str, Any] = {"step": step, "test": None}
    test = workload.test_data()
    was_training = model.training
    if test is not None:
        x, y = (t.to(train_x.device) for t in test)
        model.eval()
        with torch.no_grad():
            out["test"] = workload.evaluate(model, x.to(train_x.dtype), y)
    model.train()
    x, y = train_x[:EXAMPLES], train_y[:EXAMPLES]
    params = [p for p in model.parameters() if p.requires_grad]
    lam, iters = top_eigenvalue(lambda: workload.training_loss(net, x, y, step), params,
                                seed=seed)
    for p in params:
        p.grad = None
    if landscape:
        with torch.no_grad():
            out["landscape"] = slices(lambda: workload.training_loss(net, x, y, step), params,
                                      seed=seed)
    model.train(was_training)
    out.update(sharpness=lam, sharpness_examples=len(x), sharpness_iterations=iters)
    return out
