"""Solution quality within a budget: the best validation metric each batch size reached within
a fixed number of steps, examples or epochs (Shallue et al. section 4.7-4.8: fixed-step and
fixed-epoch budgets "measure very different things"; "large batches generalize worse" claims
are fixed-epoch effects).

Plain functions over stored curves. Per batch size, the cap in steps is ``--max-steps N``,
``--max-examples N // B``, ``--max-epochs E x n_train / B`` (rounded down), or the study's own
budget. The best is the best value of the metric over every evaluation at a step <= the cap,
over every finished trial (diverged trials count up to where they diverged). Honesty: a trial
that stopped before the cap without diverging (it reached the target and stopped, or was
pruned) might have improved later, so the batch size's best is then only a *bound* (at least
this good); specs with ``[budget] train_to_budget = true`` train every trial to its budget, so
their best is exact up to that budget. Nothing is extrapolated past a trial's last evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.analysis.records import BatchStudy, SpecStudies


@dataclass
class QualityPoint:
    """One batch size's best metric within the budget."""

    batch_size: int
    cap: int  # the budget in steps at this batch size
    cap_examples: int  # cap x B
    best_value: float | None
    best_trial: int | None
    at_step: int | None  # the evaluation where the best was measured
    n_trials: int  # finished trials with a curve of the metric
    n_short: int  # of which stopped before the cap without diverging (could have improved)
    bound: str  # "exact" | "bound" (the true best within the budget is at least this good) | "none"


def best_within(curve: dict[str, Any] | None, metric: str, direction: str, cap: int
                ) -> tuple[float, int] | None:
    """The best finite value of ``metric`` at evaluations at steps <= ``cap`` and its step
    (the earliest on ties); None when there is none."""
    if not curve or metric not in curve.get("metrics", {}):
        return None
    best: tuple[float, int] | None = None
    for step, v in zip(curve["steps"], curve["metrics"][metric]):
        if step > cap or v is None or not math.isfinite(v):
            continue
        if best is None or (v < best[0] if direction == "minimize" else v > best[0]):
            best = (v, int(step))
    return best


def cap_of(st: BatchStudy, max_steps: int | None = None, max_examples: int | None = None,
           max_epochs: float | None = None) -> int:
    """The budget in steps at this batch size (see the module doc).

    Raises:
        ValueError: ``max_epochs`` for a study that did not store its training-set size.
    """
    if max_steps is not None:
        return max_steps
    if max_examples is not None:
        return max_examples // st.batch_size
    if max_epochs is not None:
        n = st.attrs.get("data", {}).get("n_train")
        if not n:
            raise ValueError(f"study {st.study_name!r} stored no training-set size (attr "
                             "data.n_train: studies stored before it, or a workload without "
                             "a data set)")
        return int(max_epochs * n // st.batch_size)
    return int(st.max_steps or max((t.stopped_at_step or 0 for t in st.trials), default=0))


def quality_point(st: BatchStudy, metric: str, direction: str, cap: int) -> QualityPoint:
    """One batch size's :class:`QualityPoint`."""
    sign = 1.0 if direction == "minimize" else -1.0
    best: tuple[float, int, int] | None = None  # sign x value, step, trial number: least wins
    n = short = 0
    for t in st.trials:
        if t.outcome in ("failed", "running"):
            continue
        hit = best_within(t.curve, metric, direction, cap)
        if hit is None and not (t.curve and metric in t.curve.get("metrics", {})):
            continue
        n += 1
        if t.outcome != "diverged" and (t.stopped_at_step or 0) < cap:
            short += 1
        if hit is None:
            continue
        key = (sign * hit[0], hit[1], t.number)
        if best is None or key < best:
            best = key
    bound = "none" if best is None else ("bound" if short else "exact")
    return QualityPoint(st.batch_size, cap, cap * st.batch_size,
                        sign * best[0] if best else None, best[2] if best else None,
                        best[1] if best else None, n, short, bound)


def quality(s: SpecStudies, metric: str | None = None, direction: str | None = None,
            max_steps: int | None = None, max_examples: int | None = None,
            max_epochs: float | None = None) -> list[QualityPoint]:
    """Every batch size's best ``metric`` (default: the target's) within the budget."""
    metric = metric or s.target["metric"]
    direction = direction or s.target.get("direction", "minimize")
    return [quality_point(st, metric, direction, cap_of(st, max_steps, max_examples, max_epochs))
            for st in s.studies]


def quality_json(s: SpecStudies, points: list[QualityPoint], metric: str, budget: str
                 ) -> dict[str, Any]:
    """``tuner curve --quality --format json``: ``{"spec", "metric", "budget", "points"}``."""
    return {"spec": s.name, "metric": metric, "budget": budget,
            "points": [dict(p.__dict__) for p in points]}


def trains_to_budget(s: SpecStudies) -> bool:
    """Whether the spec's trials train their whole budget (``[budget] train_to_budget``)."""
    return bool(s.attrs.get("budget", {}).get("train_to_budget"))


def standard_budgets(s: SpecStudies) -> list[tuple[str, dict[str, Any]]]:
    """The budgets the report compares: fixed epochs (a tenth, a third and all of the spec's
    ``max_epochs``, when its budget is in epochs and its training-set size is stored) and fixed
    steps (a third and all of the smallest budget of any batch size): (label, keyword
    arguments of :func:`quality`)."""
    out: list[tuple[str, dict[str, Any]]] = []
    epochs = s.attrs.get("spec_identity", {}).get("budget", {}).get("max_epochs")
    if epochs and s.attrs.get("data", {}).get("n_train"):
        for e in sorted({epochs / 10, epochs / 3, float(epochs)}):
            out.append((f"{e:.3g} epochs", {"max_epochs": e}))
    least = min((st.max_steps for st in s.studies if st.max_steps), default=None)
    if least:
        for n in sorted({max(1, least // 3), least}):
            out.append((f"{n} steps", {"max_steps": n}))
    return out
