"""Optimizers and learning-rate schedules a spec may name, and the metaparameters each takes.

Every optimizer is a library class (``torch.optim`` or ``pytorch_optimizer``), never our own
code; this module only says which class a name stands for and which metaparameters a spec may
search or fix for it. Metaparameters use batch_science's scales: momentum as
``one_minus_momentum``, the betas as ``one_minus_beta1`` and ``one_minus_beta2`` (all searched on
log scales). :func:`tuner.train.optim.constructor_kwargs` turns them into the class's arguments
(``learning_rate`` -> ``lr``, the betas -> ``betas``, ``epsilon`` -> ``eps``); any other name is
the constructor argument of that name.

Besides the names in :data:`NAMED`, a spec may name any class as ``torch.optim.NAME`` or
``pytorch_optimizer.NAME``; its metaparameters are then its constructor's arguments
(``learning_rate`` required), checked against the constructor's signature by ``tuner run``
before any storage is touched (:func:`tuner.train.optim.check`).

Schedules: ``linear_decay`` decays the learning rate from ``learning_rate`` to
``end_factor * learning_rate`` over ``decay_fraction * max_steps`` steps (or an absolute
``decay_steps``), then holds it; ``warmup_linear`` and ``warmup_cosine`` warm up linearly over
``warmup_fraction * max_steps`` steps, then decay linearly or along a half cosine to
``end_factor * learning_rate`` at ``max_steps``. Building them is :mod:`tuner.train.optim`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: ``[optimizer] name = "module"``: a LightningModule's own ``configure_optimizers`` (its
#: schedulers too); only for ``[workload] module = ...`` specs.
MODULE_OPTIMIZER = "module"
#: The packages a ``PACKAGE.NAME`` optimizer may come from.
GENERIC_PACKAGES = ("torch.optim", "pytorch_optimizer")
_GENERIC = re.compile(r"^(torch\.optim|pytorch_optimizer)\.([A-Za-z_][A-Za-z0-9_]*)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Named:
    """A named optimizer: the library class, the metaparameters a spec may set (``None``: no
    default, search it or fix it), constant constructor arguments, and how many tensors of
    state per parameter it keeps (for the memory estimate). studies/README.md lists them."""

    target: str
    params: dict[str, float | None]
    constants: dict[str, Any] = field(default_factory=dict)
    states: int = 0


_ADAM_BETAS = {"one_minus_beta1": 0.1, "one_minus_beta2": 0.001}

#: The optimizers a spec names with one word.
NAMED: dict[str, Named] = {
    "sgd": Named("torch.optim.SGD", {"learning_rate": None, "weight_decay": 0.0}),
    "momentum": Named("torch.optim.SGD", {"learning_rate": None, "one_minus_momentum": None,
                                          "weight_decay": 0.0}, states=1),
    "nesterov": Named("torch.optim.SGD", {"learning_rate": None, "one_minus_momentum": None,
                                          "weight_decay": 0.0}, {"nesterov": True}, states=1),
    "adam": Named("torch.optim.Adam", {"learning_rate": None, **_ADAM_BETAS, "epsilon": 1e-8,
                                       "weight_decay": 0.0}, states=2),
    "adamw": Named("torch.optim.AdamW", {"learning_rate": None, **_ADAM_BETAS, "epsilon": 1e-8,
                                         "weight_decay": 0.01}, states=2),
    "nadam": Named("torch.optim.NAdam", {"learning_rate": None, **_ADAM_BETAS, "epsilon": 1e-8,
                                         "weight_decay": 0.0}, states=2),
    "lamb": Named("pytorch_optimizer.Lamb", {"learning_rate": None, **_ADAM_BETAS,
                                             "epsilon": 1e-6, "weight_decay": 0.0,
                                             "max_grad_norm": 1.0}, states=2),
    "lars": Named("pytorch_optimizer.LARS", {"learning_rate": None, "one_minus_momentum": 0.1,
                                             "weight_decay": 0.0, "trust_coefficient": 1e-3},
                  states=1),
    "lion": Named("pytorch_optimizer.Lion", {"learning_rate": None, "one_minus_beta1": 0.1,
                                             "one_minus_beta2": 0.01, "weight_decay": 0.0},
                  states=1),
    "shampoo": Named("pytorch_optimizer.Shampoo", {"learning_rate": None,
                                                   "one_minus_momentum": 1.0,
                                                   "weight_decay": 0.0,
                                                   "preconditioning_compute_steps": 1,
                                                   "matrix_eps": 1e-6},
                     states=3),
    "soap": Named("pytorch_optimizer.SOAP", {"learning_rate": None, "one_minus_beta1": 0.05,
                                             "one_minus_beta2": 0.05, "epsilon": 1e-8,
                                             "weight_decay": 0.01, "precondition_frequency": 10},
                  states=4),
    "muon": Named("pytorch_optimizer.Muon", {"learning_rate": None, "one_minus_momentum": 0.05,
                                             "weight_decay": 0.0, "adamw_learning_rate": None,
                                             "adamw_weight_decay": 0.0},
                  {"adamw_betas": (0.9, 0.95)}, states=1),
}

#: Every one-word name, ``module`` last (it is only for LightningModule specs).
OPTIMIZERS = (*NAMED, MODULE_OPTIMIZER)
SCHEDULES = ("constant", "linear_decay", "warmup_linear", "warmup_cosine")

SCHEDULE_PARAMS: dict[str, dict[str, float | None]] = {
    "constant": {},
    "linear_decay": {"end_factor": None, "decay_fraction": 1.0, "decay_steps": None},
    "warmup_linear": {"warmup_fraction": None, "end_factor": 0.0},
    "warmup_cosine": {"warmup_fraction": None, "end_factor": 0.0},
}

#: Every schedule's metaparameter names.
SCHEDULE_KEYS = frozenset(k for ps in SCHEDULE_PARAMS.values() for k in ps)
#: Schedule params that may stay unset even without a default (one of them is derived).
OPTIONAL_PARAMS = frozenset({"decay_steps"})
#: Metaparameters that are whole numbers (searched with ``int = true``, fixed as integers).
INTEGER_PARAMS = frozenset({"decay_steps", "preconditioning_compute_steps",
                            "precondition_frequency"})


def generic(name: str) -> tuple[str, str] | None:
    """``(package, class name)`` for a ``torch.optim.NAME`` / ``pytorch_optimizer.NAME``
    optimizer, None for any other name."""
    m = _GENERIC.match(name)
    return (m.group(1), m.group(2)) if m else None


def is_identifier(key: str) -> bool:
    """Whether ``key`` can be a constructor argument of a generic optimizer."""
    return bool(_IDENTIFIER.match(key))


def target(name: str) -> str:
    """The library class an optimizer name stands for, as ``package.Class``."""
    return name if generic(name) else NAMED[name].target


def state_tensors(name: str) -> int:
    """Tensors of optimizer state per parameter tensor (a generic optimizer: 2, as Adam)."""
    return NAMED[name].states if name in NAMED else 2


def allowed_params(optimizer: str, schedule: str) -> dict[str, float | None]:
    """Every metaparameter name a named optimizer + schedule accept, with its default (for a
    generic optimizer: the schedule's and ``learning_rate``; its others are its own)."""
    own = NAMED[optimizer].params if optimizer in NAMED else (
        {} if optimizer == MODULE_OPTIMIZER else {"learning_rate": None})
    return {**own, **SCHEDULE_PARAMS[schedule]}
