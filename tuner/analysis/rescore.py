"""Steps-to-target decided at analysis time, from the stored curves (batch_science's way).

Every trial stores every metric at every evaluation (its ``curve``), so a stored study can be
scored again at another target, or within a smaller step or example budget, without training
(Shallue et al. showed their metric robust so). Plain functions over records:

- :func:`steps_to`: the first evaluation step at which a curve meets a threshold.
- :func:`rescore_trial`: one trial's outcome under a :class:`Goal` and a step cap.
- :func:`rescore`: a whole spec's studies, with the trials that cannot be scored counted.

Honesty rules. A trial is *scored exactly* when its curve reaches the goal within the cap, when
it diverged (it never trains again), or when it was evaluated up to the cap without reaching
it. A trial that stopped earlier without meeting the goal (it reached the spec's own target
and stopped, was pruned, or its budget was shorter than the cap) is ``unknown``: it might meet
the goal later. Such a trial can only change a batch size's best if it stopped before that
best; the best is then reported as an upper bound ("<= x"), and with no reached trial at all
as unknown. Nothing is extrapolated. Re-scored steps have the study's evaluation resolution
(the crossing lies in the interval after the previous evaluation), also for the NQM, whose
own target is computed to the step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from tuner.analysis.records import BatchStudy, SpecStudies, TrialRecord
from tuner.core.goal import OPS, Goal

__all__ = ["OPS", "Goal", "Rescored", "rescore", "rescore_study", "rescore_trial", "steps_to"]

def steps_to(curve: dict[str, Any], metric: str, threshold: float, strict: bool = False,
             direction: str = "minimize", max_steps: int | None = None) -> int | None:
    """The first evaluation step at which ``metric`` is at or below ``threshold`` (strictly
    below with ``strict``; at or above / above for ``direction = "maximize"``), among the
    evaluations at steps <= ``max_steps``; None when it never is (or ``metric`` is not in the
    curve)."""
    op = ("<" if strict else "<=") if direction == "minimize" else (">" if strict else ">=")
    goal = Goal(metric, op, threshold)
    values = curve.get("metrics", {}).get(metric)
    if values is None:
        return None
    for step, v in zip(curve["steps"], values):
        if max_steps is not None and step > max_steps:
            return None
        if goal.met(v):
            return int(step)
    return None


def rescore_trial(t: TrialRecord, goal: Goal, cap: int) -> TrialRecord:
    """``t`` scored against ``goal`` within ``cap`` steps: outcome ``reached`` (steps and the
    previous evaluation step set), ``diverged``, ``missed`` (evaluated to the cap, never met)
    or ``unknown`` (stopped before the cap without meeting it; see the module doc). Failed and
    running trials are returned unchanged."""
    if t.outcome in ("failed", "running"):
        return t
    curve = t.curve or {"steps": [], "metrics": {}}
    steps = [s for s in curve["steps"] if s <= cap]
    hit = steps_to(curve, goal.metric, goal.value, goal.strict, goal.direction, cap)
    base = dict(value=None, steps_to_target=None, steps_after=None)
    if hit is not None:
        i = steps.index(hit)
        return dataclasses.replace(t, outcome="reached", steps_to_target=hit, value=float(hit),
                                   steps_after=steps[i - 1] if i > 0 else 0)
    if t.outcome == "diverged":
        return dataclasses.replace(t, **{**base, "value": float(cap)})
    if goal.metric in curve.get("metrics", {}) and (t.stopped_at_step or 0) >= cap:
        return dataclasses.replace(t, outcome="missed", **{**base, "value": float(cap)})
    return dataclasses.replace(t, outcome="unknown", **base)


@dataclass
class Rescored:
    """What re-scoring one batch-size study found (beside its re-scored records)."""

    batch_size: int
    cap: int  # the step budget applied at this batch size
    n_unknown: int  # trials that cannot be scored (stopped early without meeting the goal)
    n_could_beat: int  # ... of which stopped before the best: the best is an upper bound
    bound: str  # "exact" | "upper" (the true best is <= the one shown) | "unknown" | "none"


def rescore_study(st: BatchStudy, goal: Goal, max_steps: int | None = None,
                  max_examples: int | None = None) -> tuple[BatchStudy, Rescored]:
    """One batch-size study's trials re-scored; the cap is the smallest of the study's budget,
    ``max_steps`` and ``max_examples // batch size`` (a cap above the study's budget is used as
    given: trials that ran their whole budget are then unknown beyond it)."""
    caps = [c for c in (max_steps, max_examples // st.batch_size if max_examples else None)
            if c is not None]
    cap = min(caps) if caps else (st.max_steps or max(
        (t.stopped_at_step or 0 for t in st.trials), default=0))
    trials = [rescore_trial(t, goal, cap) for t in st.trials]
    reached = [t for t in trials if t.outcome == "reached"]
    unknown = [t for t in trials if t.outcome == "unknown"]
    best = min((t.steps_to_target for t in reached), default=None)
    could_beat = [t for t in unknown if best is None or (t.stopped_at_step or 0) < best]
    if best is None:
        bound = "unknown" if unknown else "none"
    else:
        bound = "upper" if could_beat else "exact"
    note = Rescored(st.batch_size, cap, len(unknown), len(could_beat), bound)
    out = dataclasses.replace(st, trials=trials, attrs={
        **st.attrs, "rescored": {"goal": str(goal), **dataclasses.asdict(note)}})
    return out, note


def rescore(s: SpecStudies, goal: Goal | None = None, max_steps: int | None = None,
            max_examples: int | None = None) -> tuple[SpecStudies, list[Rescored]]:
    """Every study of a spec re-scored (``goal`` None: the spec's own target); the spec's
    ``target`` becomes the goal's, and a warning line per batch size whose best is not exact
    is added."""
    goal = goal or Goal.of_target(s.target)
    studies, notes = [], []
    for st in s.studies:
        new, note = rescore_study(st, goal, max_steps, max_examples)
        studies.append(new)
        notes.append(note)
    budget = (f", within {max_steps} steps" if max_steps else "") + (
        f", within {max_examples} examples" if max_examples else "")
    warn = list(s.warnings)
    for n in notes:
        if n.bound == "upper":
            warn.append(f"warning: {s.name} B={n.batch_size}: at {goal}{budget} the best is "
                        f"only an upper bound: {n.n_could_beat} trial(s) stopped before it "
                        "without meeting the goal (they reached the spec's target or were "
                        "pruned) and might have beaten it")
        elif n.bound == "unknown":
            warn.append(f"warning: {s.name} B={n.batch_size}: at {goal}{budget} no trial "
                        f"met the goal and {n.n_unknown} stopped before the cap: the best is "
                        "unknown")
    return dataclasses.replace(s, target=goal.as_target(), studies=studies, warnings=warn), notes


def bounds_by_batch(notes: Sequence[Rescored]) -> dict[int, str]:
    """Batch size -> the bound of its re-scored best."""
    return {n.batch_size: n.bound for n in notes}
