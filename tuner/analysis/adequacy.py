"""Is each batch size tuned enough? Per-point uncertainty and a tuning-adequacy verdict.

A batch size's best steps-to-target is a best-of-N: with one trial in the good region, "the best
is not at an edge" means little, and another draw of N trials could have given a much larger
best. Per batch size this module computes

- the **good region count**: trials that reached the target within ``factor`` x the best steps
  (the good region of :mod:`tuner.analysis.sensitivity`);
- a **95 % bootstrap interval of the best steps**: the study's finished trials resampled with
  replacement (pruned, missed and diverged trials count as "not reached", as in the fit's
  bootstrap), the best recomputed, and the basic interval reflected in log space, as
  :func:`tuner.analysis.fit.fit_with_bootstrap` does; computed exactly (the bootstrap
  distribution of a minimum has a closed form), so it has no resampling noise. A resample's
  best can only be worse than the sample's, so the reflected interval reaches *below* the
  best: how far a better-tuned study might move it. Its low end is ``best^2 / q97.5``, and
  since a resample misses the best few trials with probability ~e^-k, q97.5 is close to the
  4th-best trial: the interval is narrow only when several trials lie close to the best. With
  fewer than ~4 reached trials its low end is 0 (unbounded). It does not include seed noise of
  the best trial itself;
- the **feasible fraction**: finished trials that did not diverge.

The **rule** (:class:`Rule`; all three must hold, otherwise the batch size is *under-tuned*):

1. at least ``min_good`` trials in the good region;
2. the interval's low end at least ``best / (1 + max_move)``;
3. at least ``min_feasible`` of the finished trials feasible.

The defaults come from ``benchmarks/adequacy_nqm.py`` (the NQM, whose exact optimum is known):
see benchmarks/README.md. A batch size without a reached trial has no point to judge
(status ``no point``); the verdict reports those separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from tuner.analysis.fit import best_cdf, steps_pool
from tuner.analysis.records import TrialRecord, best, good_trials
from tuner.core.space import Param

ADEQUATE = "adequate"
UNDER_TUNED = "under-tuned"
NO_POINT = "no point"


@dataclass(frozen=True)
class Rule:
    """When a batch size counts as adequately tuned (see the module docstring)."""

    min_good: int = 3
    factor: float = 1.25
    max_move: float = 0.25
    min_feasible: float = 0.5

    def text(self) -> str:
        """The rule in one line, for tables and the report."""
        return (f">= {self.min_good} trials within {self.factor:g}x of the best steps, the best's "
                f"95 % bootstrap interval reaching no lower than best/{1 + self.max_move:g}, and "
                f">= {self.min_feasible:.0%} of the finished trials not diverged")


@dataclass
class Adequacy:
    """One batch size's verdict, with the numbers it rests on."""

    batch_size: int
    status: str  # adequate | under-tuned | no point
    best_steps: int | None
    ci95: tuple[float, float] | None  # of the best steps; None without a point
    n_good: int
    n_finished: int
    n_diverged: int
    reasons: list[str] = field(default_factory=list)  # why under-tuned, one line each
    advice: list[str] = field(default_factory=list)  # what to do, one line each

    @property
    def feasible(self) -> float | None:
        """Share of finished trials that did not diverge."""
        return 1 - self.n_diverged / self.n_finished if self.n_finished else None

    @property
    def under_tuned(self) -> bool:
        """Whether the rule failed for this batch size."""
        return self.status == UNDER_TUNED


def best_interval(steps: np.ndarray) -> tuple[float, float] | None:
    """The 95 % basic bootstrap interval (log space) of ``steps.min()``, computed exactly; None
    without a finite minimum.

    The best of n trials drawn with replacement is >= the k-th smallest x_(k) with probability
    ((n - k + 1) / n)^n, so the bootstrap distribution of the best is known in closed form and
    its quantiles are order statistics (what resampling approaches, without its noise). The
    low end is 0 when the 97.5 % quantile is a trial that did not reach the target (inf).
    """
    n = len(steps)
    if n == 0 or not np.isfinite(steps.min()):
        return None
    x = np.sort(np.asarray(steps, dtype=float))
    cdf = best_cdf(n)  # P(best of a resample <= x_(k))
    q_lo, q_hi = (float(x[min(n - 1, int(np.searchsorted(cdf, q)))]) for q in (0.025, 0.975))
    est = float(x[0])
    if est == 0:  # met at step 0 (imported data evaluate before training): no spread
        return (0.0, 0.0)
    return (est * est / q_hi if math.isfinite(q_hi) else 0.0, est * est / q_lo)


def _round_out(x: float, up: bool) -> float:
    """``x`` to two significant digits, rounded away from the inside of a range."""
    if x == 0 or not math.isfinite(x):
        return x
    unit = 10 ** (math.floor(math.log10(abs(x))) - 1)
    return (math.ceil if up else math.floor)(x / unit) * unit


def narrower_bounds(trials: Sequence[TrialRecord], space: Mapping[str, Param],
                    keep: float = 0.8) -> list[str]:
    """Bounds that enclose every finished trial that did not diverge, for the numeric
    parameters where those span less than ``keep`` of the range (log space for log params)."""
    ok = [t for t in trials if t.outcome in ("reached", "missed", "pruned")]
    out = []
    for name, p in space.items():
        vals = [t.params[name] for t in ok if name in t.params]
        if p.choices is not None or not vals:
            continue
        lo, hi = min(vals), max(vals)
        span = p.position(hi) - p.position(lo)  # type: ignore[operator]
        if span >= keep:
            continue
        new_lo = max(p.low, _round_out(lo, up=False))  # type: ignore[type-var]
        new_hi = min(p.high, _round_out(hi, up=True))  # type: ignore[type-var]
        if p.integer:
            new_lo, new_hi = math.floor(new_lo), math.ceil(new_hi)
        out.append(f"{name} = {{ low = {new_lo:g}, high = {new_hi:g} }} (was {p.low:g} .. "
                   f"{p.high:g}; the trials that did not diverge span {lo:.3g} .. {hi:.3g})")
    return out


def assess(batch_size: int, trials: Sequence[TrialRecord], space: Mapping[str, Param] | None = None,
           rule: Rule = Rule(), run_cmd: str = "tuner run SPEC") -> Adequacy:
    """The adequacy of one batch-size study (``run_cmd`` starts the advice's command; empty
    for imported studies, which no command tops up)."""
    steps = steps_pool(trials)
    n_div = sum(t.outcome == "diverged" for t in trials)
    b = best(trials)
    a = Adequacy(batch_size, NO_POINT, None, None, 0, len(steps), n_div)
    if b is None:
        return a
    assert b.steps_to_target is not None
    a.best_steps = b.steps_to_target
    a.n_good = len(good_trials(trials, rule.factor))
    a.ci95 = best_interval(steps)
    more = False
    if a.n_good < rule.min_good:
        a.reasons.append(f"only {a.n_good} trial(s) within {rule.factor:g}x of the best steps "
                         f"(rule: >= {rule.min_good})")
        more = True
    assert a.ci95 is not None
    if a.ci95[0] < a.best_steps / (1 + rule.max_move):
        low = f"{a.ci95[0]:.4g}" if a.ci95[0] > 0 else "0 (unbounded)"
        a.reasons.append(f"the best's 95 % interval reaches down to {low}, more than "
                         f"{rule.max_move:.0%} below the best {a.best_steps} (rule: >= "
                         f"{a.best_steps / (1 + rule.max_move):.4g})")
        more = True
    feasible = a.feasible
    if feasible is not None and feasible < rule.min_feasible:
        a.reasons.append(f"{n_div} of {a.n_finished} trials diverged (feasible "
                         f"{feasible:.0%}; rule: >= {rule.min_feasible:.0%})")
        bounds = narrower_bounds(trials, space or {})
        a.advice.append("narrow the range where most trials diverged: " + "; ".join(bounds)
                        if bounds else "most trials diverged, but the ones that did not span "
                        "the whole range: look at the axis plots (tuner sensitivity --plots)")
    if more:
        n = a.n_finished
        want = max(2 * n, math.ceil(rule.min_good * n / max(a.n_good, 1)))
        a.advice.append(f"more trials: {run_cmd} -b {batch_size} --trials {want}" if run_cmd
                        else f"more trials (about {want} in all at B = {batch_size}): the "
                        "studies were imported and cannot be topped up here")
    a.status = UNDER_TUNED if a.reasons else ADEQUATE
    return a
