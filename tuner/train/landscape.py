"""Loss-landscape slices around a trained model (Li et al. 2018, "Visualizing the loss
landscape of neural nets"): the training loss along one and two random directions, each
*filter-normalised* (per filter, i.e. per output unit of a layer: each row of a weight matrix,
each output channel of a convolution, scaled to that filter's norm in the model), so slices of
models with different weight scales compare. One-dimensional parameters (biases, norms) get no
direction, as Li et al. do. ``tuner confirm`` takes them where a trial reached the target."""

from __future__ import annotations

from typing import Any, Callable

import torch

#: Points along each axis, and how far (in filter-normalised units) the slices reach.
POINTS_1D = 21
POINTS_2D = 11
RADIUS = 1.0


def filter_normalised_direction(params: list[torch.Tensor], gen: torch.Generator
                                ) -> list[torch.Tensor]:
    """A Gaussian direction with each filter scaled to the norm of the same filter of the
    parameters (zero for one-dimensional parameters)."""
    out = []
    for p in params:
        if p.dim() <= 1:
            out.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        d_flat, p_flat = d.reshape(len(d), -1), p.detach().reshape(len(p), -1)
        scale = p_flat.norm(dim=1, keepdim=True) / (d_flat.norm(dim=1, keepdim=True) + 1e-10)
        out.append((d_flat * scale).reshape(p.shape))
    return out


def slices(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], seed: int = 0,
           points_1d: int = POINTS_1D, points_2d: int = POINTS_2D, radius: float = RADIUS
           ) -> dict[str, Any]:
    """The loss at theta + a d1 (``loss_1d``, a in ``alphas``) and at theta + a d1 + b d2
    (``loss_2d[i][j]`` at ``alphas_2d[i]``, ``alphas_2d[j]``), with d1, d2 filter-normalised;
    the parameters are restored afterwards."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d1 = filter_normalised_direction(params, gen)
    d2 = filter_normalised_direction(params, gen)
    theta = [p.detach().clone() for p in params]

    def loss_at(a: float, b: float) -> float:
        with torch.no_grad():
            for p, t, x, y in zip(params, theta, d1, d2):
                p.copy_(t + a * x + b * y)
            v = float(loss_fn())
        return v

    def grid(n: int) -> list[float]:
        return [radius * (2 * i / (n - 1) - 1) for i in range(n)]

    try:
        a1 = grid(points_1d)
        line = [loss_at(a, 0.0) for a in a1]
        a2 = grid(points_2d)
        plane = [[loss_at(a, b) for b in a2] for a in a2]
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
    return {"alphas": a1, "loss_1d": line, "alphas_2d": a2, "loss_2d": plane,
            "normalisation": "filter", "seed": seed}
