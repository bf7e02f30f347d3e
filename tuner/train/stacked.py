"""Optimizer updates over stacked trials: K trials' parameters as one tensor each, leading dim K.

:mod:`tuner.train.many` trains K trials of one study as one vectorised model; each trial keeps
its own metaparameters, here tensors of K values broadcast over its slice of every parameter.
``torch.optim`` takes one learning rate (one momentum, ...) per parameter group, and a group
per trial would cost one optimizer call per trial and parameter at every step, so the updates
are written out here, once, as ``torch.optim``'s single-tensor implementations compute them
(SGD with momentum and Nesterov, Adam, AdamW; ``tests/train/test_stacked.py`` checks each
against ``torch.optim`` step by step). Other optimizers run one trial at a time.

The learning rate of each step is the trial's base rate times its schedule's factor
(:func:`schedule_factor`, the factors ``tuner.train.optim.build_schedule``'s schedulers apply).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tuner.spec.optimizers import NAMED
from tuner.train.optim import constructor_kwargs, decay_steps, warmup_factor, warmup_steps

#: The optimizers trials can share a vectorised model under (``[trainer] trials_at_once``).
STACKED = ("sgd", "momentum", "nesterov", "adam", "adamw")


def schedule_factor(name: str, hp: dict[str, Any], max_steps: int, step: int) -> float:
    """The learning-rate factor of optimizer step ``step`` (0-based) under schedule ``name``:
    what ``tuner.train.optim.build_schedule``'s scheduler has applied by then."""
    if name == "constant":
        return 1.0
    if name == "linear_decay":  # torch's LinearLR, in its closed form
        total, end = decay_steps(hp, max_steps), float(hp["end_factor"])
        return 1.0 + (end - 1.0) * min(step, total) / total
    if name in ("warmup_linear", "warmup_cosine"):
        return warmup_factor(step, warmup_steps(hp, max_steps), max_steps,
                             float(hp["end_factor"]), name == "warmup_cosine")
    raise ValueError(f"unknown schedule {name!r}")


class StackedOptimizer:
    """One of :data:`STACKED` over stacked parameters (``{name: tensor [K, ...]}``), with
    per-lane metaparameters. A lane is one trial; :meth:`set_lane` gives lane ``k`` a new
    trial's metaparameters and fresh state, :meth:`keep` drops lanes."""

    def __init__(self, name: str, params: dict[str, torch.Tensor]) -> None:
        if name not in STACKED:
            raise ValueError(f"optimizer {name!r} cannot train stacked trials; allowed: "
                             f"{', '.join(STACKED)}")
        self.name = name
        self.adam = name in ("adam", "adamw")
        k = next(iter(params.values())).shape[0]
        self.hp: list[dict[str, Any]] = [{} for _ in range(k)]
        self.steps = [0] * k  # updates each lane has made (Adam's bias correction)
        self.state = {n: [torch.zeros_like(p) for _ in range(2 if self.adam else 1)]
                      for n, p in params.items()}

    def set_lane(self, k: int, hp: dict[str, Any]) -> None:
        """Lane ``k`` now trains a trial with resolved metaparameters ``hp`` from scratch."""
        kwargs = constructor_kwargs(self.name, hp)
        if kwargs.get("dampening", 0) or kwargs.get("maximize") or kwargs.get("amsgrad"):
            raise ValueError("dampening, maximize and amsgrad are not stacked")
        if kwargs.get("nesterov") and kwargs.get("momentum", 0.0) <= 0:  # as torch.optim.SGD
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.hp[k] = kwargs
        self.steps[k] = 0
        for states in self.state.values():
            for s in states:
                s[k].zero_()

    def keep(self, lanes: list[int]) -> None:
        """Keep only ``lanes`` (in this order)."""
        self.hp = [self.hp[k] for k in lanes]
        self.steps = [self.steps[k] for k in lanes]
        idx = torch.tensor(lanes, device=next(iter(self.state.values()))[0].device)
        self.state = {n: [s.index_select(0, idx) for s in ss] for n, ss in self.state.items()}

    def _column(self, values: list[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             factors: list[float]) -> None:
        """One update of every lane, its learning rate scaled by its schedule ``factors``."""
        like = next(iter(params.values()))
        lr = self._column([h["lr"] * f for h, f in zip(self.hp, factors)], like)
        wd = [h.get("weight_decay", 0.0) for h in self.hp]
        self.steps = [s + 1 for s in self.steps]
        if self.adam:
            self._adam(params, grads, lr, wd)
        else:
            self._sgd(params, grads, lr, wd)

    def _sgd(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             lr: torch.Tensor, wd: list[float]) -> None:
        like = next(iter(params.values()))
        nesterov = NAMED[self.name].constants.get("nesterov", False)
        momentum = [h.get("momentum", 0.0) for h in self.hp]
        m = self._column(momentum, like) if any(momentum) else None
        w = self._column(wd, like) if any(wd) else None
        for n, p in params.items():
            shape = (-1,) + (1,) * (p.ndim - 1)
            d = grads[n]
            if w is not None:
                d = d + w.view(shape) * p
            if m is not None:  # a zero buffer gives torch's first step: buf = d
                buf = self.state[n][0]
                buf.mul_(m.view(shape)).add_(d)
                d = d + m.view(shape) * buf if nesterov else buf
            p.sub_(lr.view(shape) * d)

    def _adam(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
              lr: torch.Tensor, wd: list[float]) -> None:
        like = next(iter(params.values()))
        b1 = [h.get("betas", (0.9, 0.999))[0] for h in self.hp]
        b2 = [h.get("betas", (0.9, 0.999))[1] for h in self.hp]
        eps = self._column([h.get("eps", 1e-8) for h in self.hp], like)
        one_minus_b1 = self._column([1.0 - b for b in b1], like)
        beta2 = self._column(b2, like)
        one_minus_b2 = self._column([1.0 - b for b in b2], like)
        step_size = lr / self._column([1.0 - b ** s for b, s in zip(b1, self.steps)], like)
        bc2_sqrt = self._column([math.sqrt(1.0 - b ** s) for b, s in zip(b2, self.steps)], like)
        w = self._column(wd, like) if any(wd) else None
        decoupled = self.name == "adamw"
        for n, p in params.items():
            shape = (-1,) + (1,) * (p.ndim - 1)
            g = grads[n]
            if w is not None:
                if decoupled:
                    p.mul_(1.0 - lr.view(shape) * w.view(shape))
                else:
                    g = g + w.view(shape) * p
            exp_avg, exp_avg_sq = self.state[n]
            exp_avg.lerp_(g, one_minus_b1.view(shape))
            exp_avg_sq.mul_(beta2.view(shape)).addcmul_(g, one_minus_b2.view(shape) * g)
            denom = (exp_avg_sq.sqrt() / bc2_sqrt.view(shape)).add_(eps.view(shape))
            p.sub_(step_size.view(shape) * exp_avg / denom)
