"""Scaling-curve points: the best steps-to-target per batch size, from stored trials."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tuner.analysis.load import TrialRecord


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
    best_wall_seconds: float | None = None  # the best trial's wall time to the target


def best(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial that reached the target in the fewest steps (the earliest on ties)."""
    reached = [t for t in trials if t.outcome == "reached"]
    return min(reached, key=lambda t: (t.steps_to_target, t.number)) if reached else None


def point(batch_size: int, trials: Sequence[TrialRecord]) -> Point:
    """Summarise one batch-size study's trials. Reads ``reached``; never guesses from values."""
    p = Point(batch_size=batch_size, best_steps=None, best_trial=None)
    for t in trials:
        if t.outcome == "running":
            continue
        p.n_trials += t.outcome != "failed"
        setattr(p, f"n_{t.outcome}", getattr(p, f"n_{t.outcome}") + 1)
    b = best(trials)
    if b is not None:
        p.best_steps, p.best_steps_after = b.steps_to_target, b.steps_after
        p.best_trial, p.best_params = b.number, dict(b.params)
        p.best_wall_seconds = b.wall_seconds
    return p
