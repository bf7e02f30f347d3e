"""Scaling-curve points: the best steps-to-target per batch size, from stored trials."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from optuna.trial import FrozenTrial, TrialState


@dataclass
class Point:
    """One batch size's summary (the ``points`` entry of DESIGN.md's curve JSON)."""

    batch_size: int
    best_steps: int | None
    best_trial: int | None
    best_params: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 0
    n_reached: int = 0
    n_missed: int = 0
    n_pruned: int = 0
    n_diverged: int = 0
    n_failed: int = 0
    best_steps_after: int | None = None  # the target was crossed in (after, best_steps]


def outcome_of(t: FrozenTrial) -> str:
    """``reached`` | ``missed`` | ``pruned`` | ``diverged`` | ``failed`` | ``running``."""
    if t.state == TrialState.PRUNED:
        return "pruned"
    if t.state == TrialState.COMPLETE:
        if t.user_attrs.get("reached"):
            return "reached"
        return "diverged" if t.user_attrs.get("diverged") else "missed"
    return "running" if t.state in (TrialState.RUNNING, TrialState.WAITING) else "failed"


def point(batch_size: int, trials: Sequence[FrozenTrial]) -> Point:
    """Summarise one batch-size study's trials. Reads ``reached``; never guesses from values."""
    p = Point(batch_size=batch_size, best_steps=None, best_trial=None)
    best: FrozenTrial | None = None
    for t in trials:
        kind = outcome_of(t)
        if kind == "running":
            continue
        p.n_trials += kind != "failed"
        setattr(p, f"n_{kind}", getattr(p, f"n_{kind}") + 1)
        if kind == "reached" and (
            best is None or t.user_attrs["steps_to_target"] < best.user_attrs["steps_to_target"]
        ):
            best = t
    if best is not None:
        p.best_steps = best.user_attrs["steps_to_target"]
        p.best_steps_after = best.user_attrs.get("steps_to_target_after")
        p.best_trial = best.number
        p.best_params = dict(best.params)
    return p
