"""Scaling-curve points: the best steps-to-target per batch size, from stored trials."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tuner.analysis.adequacy import Adequacy
from tuner.analysis.fit import best_steps_per_batch, fit_or_reason, fit_with_bootstrap
from tuner.analysis.records import TrialRecord, best
from tuner.analysis.throughput import step_time

__all__ = ["Curve", "Point", "best", "curve", "point"]


@dataclass
class Point:
    """One batch size's summary (the ``points`` entry of docs/DESIGN.md's curve JSON)."""

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
    n_duplicates: int = 0  # finished trials of an already finished slot, set aside
    n_unknown: int = 0  # re-scored trials that stopped too early to be scored (rescore.py)
    #: ``exact``; after re-scoring also ``upper`` (the true best is <= best_steps: a trial
    #: that stopped earlier might have beaten it) or ``unknown`` (no best, but trials that
    #: stopped early might have reached the goal)
    best_bound: str = "exact"
    #: 95 % bootstrap interval of best_steps (tuner.analysis.adequacy; None: not computed)
    best_ci95: tuple[float, float] | None = None
    n_good: int = 0  # reached trials within the adequacy rule's factor of the best
    tuning: str | None = None  # adequate | under-tuned | no point (None: not assessed)
    tuning_reasons: list[str] = field(default_factory=list)  # why under-tuned
    tuning_advice: list[str] = field(default_factory=list)  # what to do about it
    #: Median steady-state seconds per step (tuner.analysis.throughput), its basis, its device
    step_seconds: float | None = None
    step_time_basis: str | None = None  # "steady" | "wall" | "shared" (throughput.StepTime.how)
    device: str | None = None
    examples_per_second: float | None = None  # B / step_seconds
    time_to_target: float | None = None  # best_steps x step_seconds


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
    st = step_time(trials)
    if st is not None:
        p.step_seconds, p.step_time_basis, p.device = st.seconds, st.how, st.device
        p.examples_per_second = batch_size / st.seconds if st.seconds > 0 else None
        if p.best_steps is not None:
            p.time_to_target = p.best_steps * st.seconds
    return p


@dataclass
class Curve:
    """One spec's scaling curve: points per batch size and the fitted model."""

    name: str
    target: dict[str, Any]
    optimizer: str
    points: list[Point]
    fit: Any = None  # tuner.analysis.fit.Fit | None
    fixed_params: dict[str, Any] = field(default_factory=dict)
    no_fit_because: str | None = None  # why ``fit`` is None
    n_duplicates: int = 0  # duplicate finished trials set aside, over all batch sizes
    #: The fit without the under-tuned points (None when no point is under-tuned, or too few
    #: adequate points remain: then ``fit_tuned_because`` says why)
    fit_tuned: Any = None
    fit_tuned_because: str | None = None
    tuning: dict[int, Adequacy] = field(default_factory=dict)  # per batch size, when assessed
    #: ``{"name", "key", "value"}`` when the spec is a member of a series (tuner.spec.series)
    series: dict[str, Any] | None = None
    #: the three critical batch sizes side by side (tuner.analysis.cbs.Definitions)
    cbs: Any = None

    @property
    def under_tuned(self) -> list[int]:
        """Batch sizes the adequacy rule flagged."""
        return [p.batch_size for p in self.points if p.tuning == "under-tuned"]

    @property
    def unreliable_because(self) -> list[str]:
        """Why the fitted curve should not be trusted (empty when it can be)."""
        loose = [f"B={p.batch_size}: the re-scored best is {'only an upper bound' if p.best_bound == 'upper' else 'unknown'}"
                 for p in self.points if p.best_bound in ("upper", "unknown")]
        if self.under_tuned:
            loose.append(f"under-tuned at B = {', '.join(map(str, self.under_tuned))}")
        if self.fit is None:
            return [f"no fit: {self.no_fit_because or 'no batch size reached the target'}",
                    *loose]
        return [*self.fit.unreliable_because, *loose]

    @property
    def reliable(self) -> bool:
        """Whether the fit exists and nothing in :attr:`unreliable_because` applies."""
        return not self.unreliable_because

    def time_optimal(self) -> Point | None:
        """The point with the least time to target (None when no point has one)."""
        timed = [p for p in self.points if p.time_to_target is not None]
        return min(timed, key=lambda p: (p.time_to_target, p.batch_size)) if timed else None

    def reached(self) -> list[Point]:
        """Points with a best trial."""
        return [p for p in self.points if p.best_steps is not None]

    def effective_lr(self, p: Point) -> float | None:
        """The best trial's effective learning rate eta / (1 - gamma) (momentum optimizers)."""
        lr = p.best_params.get("learning_rate", self.fixed_params.get("learning_rate"))
        omm = p.best_params.get("one_minus_momentum",
                                self.fixed_params.get("one_minus_momentum"))
        if lr is None or omm is None or self.optimizer not in ("momentum", "nesterov"):
            return None
        return lr / omm

    def learning_rate(self, p: Point) -> float | None:
        """The best trial's learning rate."""
        return p.best_params.get("learning_rate", self.fixed_params.get("learning_rate"))


def curve(name: str, target: dict[str, Any], optimizer: str,
          trials_by_b: dict[int, Sequence[TrialRecord]], fixed_params: dict[str, Any],
          n_boot: int = 1000, seed: int = 0, adequacy: Mapping[int, Adequacy] | None = None
          ) -> Curve:
    """Points and the bootstrapped McCandlish fit of one spec's studies; with ``adequacy``
    (per batch size), each point carries its verdict and interval, and the fit is repeated
    without the under-tuned points."""
    points = [point(b, trials) for b, trials in sorted(trials_by_b.items())]
    f = fit_with_bootstrap(trials_by_b, n_boot=n_boot, seed=seed)
    c = Curve(name, target, optimizer, points, f, fixed_params)
    if f is None:
        found = best_steps_per_batch(trials_by_b)
        c.no_fit_because = fit_or_reason(list(found), list(found.values()))[1]
    c.tuning = dict(adequacy or {})
    for p in points:
        a = c.tuning.get(p.batch_size)
        if a is not None:
            p.best_ci95, p.n_good, p.tuning = a.ci95, a.n_good, a.status
            p.tuning_reasons, p.tuning_advice = list(a.reasons), list(a.advice)
    if c.under_tuned:
        kept = {b: t for b, t in trials_by_b.items() if b not in c.under_tuned}
        c.fit_tuned = fit_with_bootstrap(kept, n_boot=n_boot, seed=seed)
        if c.fit_tuned is None:
            found = best_steps_per_batch(kept)
            c.fit_tuned_because = fit_or_reason(list(found), list(found.values()))[1]
    return c
