"""A goal ``METRIC op VALUE``: the spec's extra targets (``[target] also``) and the targets
analysis re-scores at (``--target``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

#: Comparison operators a goal may use: ``<=``/``>=`` as the spec's targets, strict ``<``/``>``
#: as batch_science's ``compute_steps_to_result`` allows.
OPS = ("<=", "<", ">=", ">")
_GOAL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_./-]*)\s*(<=|>=|<|>)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Goal:
    """``metric op value``: reached at the first evaluation where the comparison holds."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Goal:
        """``'error<=0.06'`` -> Goal. Raises ValueError with what is allowed."""
        m = _GOAL.match(text)
        try:
            value = float(m.group(3)) if m else math.nan
        except ValueError:
            value = math.nan
        if not m or not math.isfinite(value):
            raise ValueError(f"{text!r}; allowed: METRIC<=VALUE, METRIC<VALUE, METRIC>=VALUE or "
                             "METRIC>VALUE with a finite number, e.g. 'error<=0.06'")
        return cls(m.group(1), m.group(2), value)

    @classmethod
    def of_target(cls, target: dict[str, Any]) -> Goal:
        """The goal of a stored spec target (``{"metric", "value", "direction"[, "op"]}``;
        without ``op``, ``<=`` when minimizing and ``>=`` when maximizing)."""
        op = target.get("op") or ("<=" if target.get("direction", "minimize") == "minimize"
                                  else ">=")
        return cls(target["metric"], op, float(target["value"]))

    @property
    def direction(self) -> str:
        """``minimize`` for ``<=``/``<``, else ``maximize``."""
        return "minimize" if self.op in ("<=", "<") else "maximize"

    @property
    def strict(self) -> bool:
        """Whether the comparison is strict (``<``, ``>``)."""
        return self.op in ("<", ">")

    def met(self, v: float | None) -> bool:
        """Whether the value ``v`` meets the goal (None and NaN never do)."""
        if v is None or not math.isfinite(v):
            return False
        return {"<=": v <= self.value, "<": v < self.value,
                ">=": v >= self.value, ">": v > self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def as_target(self) -> dict[str, Any]:
        """The goal in the stored target's shape (plus ``op``)."""
        return {"metric": self.metric, "value": self.value, "direction": self.direction,
                "op": self.op}
