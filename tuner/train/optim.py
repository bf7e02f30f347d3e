"""Building the torch optimizer and learning-rate schedule a spec names (:mod:`tuner.spec.optimizers`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from tuner.spec.optimizers import OPTIMIZERS, SCHEDULES

if TYPE_CHECKING:
    import torch


def build_optimizer(
    name: str, parameters: Iterable[torch.nn.Parameter], hp: dict[str, Any]
) -> torch.optim.Optimizer:
    """A torch optimizer from resolved metaparameters ``hp``."""
    import torch  # heavy: torch, only when needed

    lr, wd = float(hp["learning_rate"]), float(hp.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        momentum = 1.0 - float(hp["one_minus_momentum"])
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=wd
        )
    if name == "adam":
        betas = (1.0 - float(hp["one_minus_beta1"]), 1.0 - float(hp["one_minus_beta2"]))
        return torch.optim.Adam(parameters, lr=lr, betas=betas, eps=float(hp["epsilon"]),
                                weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def decay_steps(hp: dict[str, Any], max_steps: int) -> int:
    """Number of steps the linear decay lasts at this budget (at least 1)."""
    if hp.get("decay_steps") is not None:
        return max(1, int(hp["decay_steps"]))
    return max(1, round(float(hp["decay_fraction"]) * max_steps))


def build_schedule(
    name: str, optimizer: torch.optim.Optimizer, hp: dict[str, Any], max_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step learning-rate scheduler (call ``.step()`` after each optimizer step), or None
    for a constant learning rate (nothing to step)."""
    import torch  # heavy: torch, only when needed

    if name == "constant":
        return None
    if name == "linear_decay":
        return torch.optim.lr_scheduler.LinearLR(
            optimizer,
            start_factor=1.0,
            end_factor=float(hp["end_factor"]),
            total_iters=decay_steps(hp, max_steps),
        )
    raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
