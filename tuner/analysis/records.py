"""Plain records of stored studies: what every analysis function works on.

Built from Optuna storage by :mod:`tuner.store.source`; nothing here knows about storage,
Optuna trials or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from tuner.core.space import Param


@dataclass
class TrialRecord:
    """One stored trial, as analysis needs it."""

    number: int
    outcome: str  # reached | missed | pruned | diverged | failed | running
    params: dict[str, Any]
    steps_to_target: int | None = None
    steps_after: int | None = None  # the target was crossed in (steps_after, steps_to_target]
    stopped_at_step: int | None = None
    wall_seconds: float | None = None
    slot: int | None = None  # the trial's point in the quasi-random sequence (tuner.run.trialqueue)
    value: float | None = None  # the objective value Optuna stores (COMPLETE trials only)
    eval_seconds: float | None = None
    step_seconds: float | None = None  # steady-state seconds per training step
    device: str | None = None  # e.g. "cpu", "cuda:0"
    #: The most trials it trained together with, itself included (``[trainer]
    #: trials_at_once``; its ``step_seconds`` is then the whole stack's step), or None: alone.
    at_once: int | None = None
    #: tuner confirm: test metrics and sharpness where the target was reached (attr at_target)
    at_target: dict[str, Any] | None = None
    #: Every evaluation: ``{"steps": [...], "metrics": {name: [...]}}`` (the ``curve`` attr;
    #: for studies stored before it, the target metric's intermediate values). None: unknown.
    curve: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        """Whether the trial has an outcome (not running, not failed)."""
        return self.outcome not in ("running", "failed")


@dataclass
class BatchStudy:
    """One batch-size study: its attrs and trials."""

    batch_size: int
    trials: list[TrialRecord]
    search_space: dict[str, Param] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    study_name: str = ""
    n_duplicates: int = 0  # finished trials of an already finished slot, set aside
    n_incomplete_trials: int = 0  # finished trials without their result attrs, left out

    @property
    def max_steps(self) -> int | None:
        """The study's budget in steps."""
        return self.attrs.get("budget", {}).get("max_steps")


@dataclass
class SpecStudies:
    """All batch-size studies of one spec (and seed), sorted by batch size."""

    name: str
    seed: int
    target: dict[str, Any]
    studies: list[BatchStudy]
    attrs: dict[str, Any] = field(default_factory=dict)  # of the first study
    warnings: list[str] = field(default_factory=list)  # one line each, for stderr
    skipped: list[str] = field(default_factory=list)  # names of incomplete studies left out

    @property
    def n_duplicates(self) -> int:
        """Duplicate finished trials set aside, over all batch sizes."""
        return sum(s.n_duplicates for s in self.studies)

    @property
    def batch_sizes(self) -> list[int]:
        """Batch sizes with a study."""
        return [s.batch_size for s in self.studies]


def param_from_attr(name: str, attr: dict[str, Any]) -> Param:
    """A :class:`Param` from its stored ``search_space`` entry."""
    if "choices" in attr:
        return Param(name, choices=tuple(attr["choices"]))
    return Param(name, low=attr["low"], high=attr["high"], log=bool(attr.get("log")),
                 integer=bool(attr.get("int")))


def finite(x: float | None) -> bool:
    """Whether ``x`` is a finite number."""
    return x is not None and math.isfinite(x)


def best(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial that reached the target in the fewest steps (the earliest on ties)."""
    reached = [t for t in trials if t.outcome == "reached"]
    return min(reached, key=lambda t: (t.steps_to_target, t.number)) if reached else None


def good_trials(trials: Sequence[TrialRecord], factor: float) -> list[TrialRecord]:
    """Reached trials within ``factor`` x the best steps (the good region), the best included."""
    b = best(trials)
    if b is None:
        return []
    assert b.steps_to_target is not None
    limit = factor * b.steps_to_target
    return [t for t in trials if t.outcome == "reached" and t.steps_to_target is not None
            and t.steps_to_target <= limit]


def stored_metrics(s: SpecStudies) -> set[str]:
    """Every metric some trial of the spec's studies has in its stored curve."""
    return {m for st in s.studies for t in st.trials if t.curve for m in t.curve["metrics"]}
