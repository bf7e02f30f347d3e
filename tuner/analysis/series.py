"""Series of specs (``[series]``: one spec per value of a key, e.g. the training-set size):
the fitted critical batch size and S_min against the series value (Shallue et al. section 4.5,
Zhang et al. 2024: "does the critical batch size grow with the data?").

Plain functions over the member curves; members of several series are grouped by the series'
name (and, re-scored, by the target: curves of one series at two targets are two rows each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tuner.analysis.curves import Curve
from tuner.core.goal import Goal


@dataclass
class SeriesRow:
    """One member of a series: its value and its fit."""

    value: Any
    spec: str
    b_crit: float | None
    b_crit_ci95: tuple[float, float] | None
    s_min: float | None
    s_min_ci95: tuple[float, float] | None
    reliable: bool
    unreliable_because: str | None
    n_points: int  # batch sizes that reached the target


@dataclass
class SeriesCurve:
    """A whole series: its key and one row per member, in the series' order."""

    name: str
    key: str
    target: str
    rows: list[SeriesRow] = field(default_factory=list)

    def trend(self) -> str:
        """In words: how B_crit moves with the value, from the members whose fit is reliable
        (a slope in log-log over them; "unreliable" members are left out of it, and said)."""
        pts = [(float(r.value), r.b_crit) for r in self.rows
               if r.reliable and r.b_crit and isinstance(r.value, (int, float))]
        left = [str(r.value) for r in self.rows if not r.reliable]
        why = f" (left out as unreliable: {self.key} = {', '.join(left)})" if left else ""
        if len(pts) < 2:
            return (f"too few reliable fits to say how B_crit moves with {self.key} "
                    f"({len(pts)} of {len(self.rows)}){why}")
        slope = float(np.polyfit(np.log([x for x, _ in pts]), np.log([y for _, y in pts]), 1)[0])
        return (f"B_crit ~ {self.key}^{slope:.2f} over {len(pts)} reliable fits "
                f"(log-log least squares){why}")


def _ci(fit: Any, key: str) -> tuple[float, float] | None:
    ci = getattr(fit, "ci95", {}) or {}
    return tuple(ci[key]) if key in ci else None  # type: ignore[return-value]


def series_curves(curves: Sequence[Curve]) -> list[SeriesCurve]:
    """The series among ``curves`` (members of no series are left out), in order of first
    appearance."""
    out: dict[tuple[str, str], SeriesCurve] = {}
    for c in curves:
        if not c.series:
            continue
        target = str(Goal.of_target(c.target))
        sc = out.setdefault((c.series["name"], target),
                            SeriesCurve(c.series["name"], c.series["key"], target))
        f = c.fit
        sc.rows.append(SeriesRow(
            value=c.series["value"], spec=c.name,
            b_crit=f.b_crit if f else None, b_crit_ci95=_ci(f, "b_crit") if f else None,
            s_min=f.s_min if f else None, s_min_ci95=_ci(f, "s_min") if f else None,
            reliable=c.reliable, unreliable_because="; ".join(c.unreliable_because) or None,
            n_points=len(c.reached())))
    return list(out.values())


def series_json(sc: SeriesCurve) -> dict[str, Any]:
    """A series in JSON: ``{"series", "key", "target", "trend", "rows": [...]}``."""
    return {"series": sc.name, "key": sc.key, "target": sc.target, "trend": sc.trend(),
            "rows": [dict(r.__dict__) for r in sc.rows]}
