"""Optimizers and learning-rate schedules a spec may name, and the metaparameters each takes.

Momentum is tuned as ``one_minus_momentum`` on a log scale, Adam's betas as ``one_minus_beta1`` and
``one_minus_beta2``, as in Google's batch_science code. The linear-decay schedule decays the
learning rate from ``learning_rate`` to ``end_factor * learning_rate`` over
``decay_fraction * max_steps`` steps (or an absolute ``decay_steps``), then holds it. Building
them is :mod:`tuner.train.optim`'s job.
"""

from __future__ import annotations

#: ``[optimizer] name = "module"``: a LightningModule's own ``configure_optimizers`` (its
#: schedulers too); only for ``[workload] module = ...`` specs, and always the last name here.
MODULE_OPTIMIZER = "module"
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", MODULE_OPTIMIZER)
SCHEDULES = ("constant", "linear_decay")

#: Metaparameters each optimizer takes; ``None`` means "no default: search it or fix it".
OPTIMIZER_PARAMS: dict[str, dict[str, float | None]] = {
    "sgd": {"learning_rate": None, "weight_decay": 0.0},
    "momentum": {"learning_rate": None, "one_minus_momentum": None, "weight_decay": 0.0},
    "nesterov": {"learning_rate": None, "one_minus_momentum": None, "weight_decay": 0.0},
    "adam": {
        "learning_rate": None,
        "one_minus_beta1": 0.1,
        "one_minus_beta2": 0.001,
        "epsilon": 1e-8,
        "weight_decay": 0.0,
    },
    MODULE_OPTIMIZER: {},
}

SCHEDULE_PARAMS: dict[str, dict[str, float | None]] = {
    "constant": {},
    "linear_decay": {"end_factor": None, "decay_fraction": 1.0, "decay_steps": None},
}

#: Schedule params that may stay unset even without a default (one of them is derived).
OPTIONAL_PARAMS = frozenset({"decay_steps"})


def allowed_params(optimizer: str, schedule: str) -> dict[str, float | None]:
    """Every metaparameter name the optimizer + schedule accept, with its default."""
    return {**OPTIMIZER_PARAMS[optimizer], **SCHEDULE_PARAMS[schedule]}
