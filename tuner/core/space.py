"""Search space: spec parameters <-> Optuna distributions, and where a value sits in its range."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

#: Where a fixed or searched metaparameter may lie: (low, high, low inclusive, high inclusive).
PARAM_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, math.inf, False, False),
    "one_minus_momentum": (0.0, 1.0, False, True),
    "one_minus_beta1": (0.0, 1.0, False, True),
    "one_minus_beta2": (0.0, 1.0, False, True),
    "epsilon": (0.0, math.inf, False, False),
    "weight_decay": (0.0, math.inf, True, False),
    "end_factor": (0.0, 1.0, True, True),
    "decay_fraction": (0.0, 1.0, False, True),
    "decay_steps": (1.0, math.inf, True, False),
    "warmup_fraction": (0.0, 1.0, True, False),
    "trust_coefficient": (0.0, math.inf, False, False),
    "adamw_learning_rate": (0.0, math.inf, False, False),
    "adamw_weight_decay": (0.0, math.inf, True, False),
    "max_grad_norm": (0.0, math.inf, True, False),
    "matrix_eps": (0.0, math.inf, False, False),
    "preconditioning_compute_steps": (1.0, math.inf, True, False),
    "precondition_frequency": (1.0, math.inf, True, False),
}


@dataclass(frozen=True)
class Param:
    """One searched metaparameter: a numeric range (``low``/``high``/``log``) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution that samples this parameter."""
        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def middle(self) -> Any:
        """A value in the middle of the range (geometric with ``log``), or the middle choice:
        what a pre-flight trial uses."""
        if self.choices is not None:
            return self.choices[len(self.choices) // 2]
        assert self.low is not None and self.high is not None
        if self.log:
            v = math.sqrt(float(self.low) * float(self.high))
        else:
            v = (float(self.low) + float(self.high)) / 2
        return round(v) if self.integer else v

    def to_attr(self) -> dict[str, Any]:
        """The JSON form stored in the study's ``search_space`` attr (docs/DESIGN.md)."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.integer:
            out["int"] = True
        return out

    def position(self, value: Any) -> float | None:
        """Where ``value`` lies in the range: 0 at ``low``, 1 at ``high`` (log space if ``log``).

        ``None`` for categorical parameters, which have no edges.
        """
        if self.choices is not None:
            return None
        assert self.low is not None and self.high is not None
        if self.log:
            lo, hi, v = math.log(self.low), math.log(self.high), math.log(value)
        else:
            lo, hi, v = float(self.low), float(self.high), float(value)
        return (v - lo) / (hi - lo)


def distributions(params: tuple[Param, ...]) -> dict[str, BaseDistribution]:
    """Name -> Optuna distribution for every searched parameter."""
    return {p.name: p.distribution() for p in params}
