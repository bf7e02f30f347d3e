"""Adaptive measurement of a scaling curve: which batch size to measure next, and when to stop.

``tuner run SPEC --adaptive`` (:mod:`tuner.run.adaptive`) measures only some of the spec's batch
sizes. The rules, as plain functions a reader can check against the printed plan:

- **First**: ``first`` batch sizes of the spec, spread evenly in log space from the smallest to
  the largest (:func:`first_batch_sizes`).
- **Within a batch size**: trials in rounds of ``chunk`` (the spec's quasi-random sequence, so
  the first trials cover the search space evenly), stopping at the first round after which the
  tuning-adequacy rule (:class:`tuner.analysis.adequacy.Rule`: enough trials near the best and
  a narrow bootstrap interval of the best) holds, or the last ``patience`` rounds improved the
  best by less than ``plateau`` (relative; 0: never), or the study has the spec's ``trials``
  (:func:`study_stop`). The plateau rule is what makes it cheap, and what can leave a batch size
  under-tuned where its good region is a sliver of the search space: the printed plan says
  which rule stopped each batch size.
- **Warm start and compass steps** (``warm_start``, on by default): a batch size measured after
  others starts with the params :func:`warm_start` predicts from their bests and the points
  :func:`around` them; once its rounds stop adequate or on a plateau, compass steps around its
  best (:func:`around` at ``step`` octaves, halved after a step that gains less than
  ``plateau``, down to ``step / 4``) find the sliver the quasi-random points straddle. These
  trials are chosen, not drawn: the rounds' rules judge them with the rest.
- **Next**: of the unmeasured batch sizes in the knee (the diminishing-returns regime, 1/4 to 4
  x B_crit, over B_crit's 95 % interval), the one where the fit's bootstrap resamples disagree
  most about the steps (the widest 95 % range of log2 S(B) over the resamples' fits); the
  whole grid once the knee is measured (:func:`next_batch_size`). Without a usable fit, the
  batch size farthest (in log space) from every measured one.
- **Stop** (:func:`stop_reason`, after each batch size is measured), at the first of: every
  batch size of the spec is measured; the trained examples reach the budget (checked after
  every round too, so a run passes it by at most one round's trials); (a) B_crit's 95 %
  bootstrap interval spans at most ``width`` (high / low) and the last batch size added was
  predicted by the fit made before it within ``predict_within`` (relative error of the steps);
  or (b) each of the last ``confirm``
  batch sizes added was so predicted. The interval alone is tuning noise only; a prediction
  checks the curve's form where it was not measured, so (a) and (b) need at least ``first + 1``
  batch sizes measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from tuner.analysis.adequacy import ADEQUATE, Adequacy, Rule
from tuner.analysis.fit import MAXIMAL_ABOVE, PERFECT_BELOW, Fit
from tuner.analysis.records import TrialRecord
from tuner.core.space import Param


@dataclass(frozen=True)
class Plan:
    """The stopping rules of an adaptive measurement (see the module docstring)."""

    first: int = 4
    chunk: int = 8
    plateau: float = 0.05
    patience: int = 2
    width: float = 1.5
    predict_within: float = 0.25
    confirm: int = 2
    max_examples: float | None = None
    rule: Rule = Rule()
    warm_start: bool = True
    step: float = 1.0

    def text(self) -> str:
        """The plan in one line, for the run's first line of output."""
        budget = f"{self.max_examples:.3g} trained examples" if self.max_examples else "none"
        warm = (f"each later batch size's first trials at the params predicted from the measured "
                f"ones' bests and {self.step:g} octave(s) around them; " if self.warm_start
                else "")
        compass = (f", then compass steps around the best ({self.step:g} octave(s), halved "
                   f"after a step that gains < {self.plateau:.0%}, down to "
                   f"{self.step / 4:g})" if self.warm_start else "")
        return (f"{self.first} batch sizes first, log-spaced; {warm}"
                f"trials in rounds of {self.chunk} "
                f"until adequate ({self.rule.text()}) or {self.patience} rounds improve the best "
                f"by < {self.plateau:.0%}{compass}; then the batch size in the knee the fit is "
                "least sure "
                f"of, until B_crit's 95 % interval spans <= {self.width:g}x and the last one "
                f"added was predicted within {self.predict_within:.0%}, or the last "
                f"{self.confirm} added were; budget: {budget}")


@dataclass
class Step:
    """One batch size added: why, and what the fit before it predicted."""

    batch_size: int
    why: str
    predicted: float | None = None  # steps, by the fit before this batch size was measured
    measured: int | None = None  # best steps once measured (None: target never reached)

    @property
    def error(self) -> float | None:
        """Relative error of the prediction (None without both)."""
        if self.predicted is None or self.measured is None:
            return None
        return abs(self.predicted - self.measured) / self.measured


@dataclass
class Progress:
    """What an adaptive measurement has done so far."""

    steps: list[Step] = field(default_factory=list)
    examples: float = 0.0  # trained so far

    @property
    def measured(self) -> list[int]:
        """Batch sizes measured, in the order they were added."""
        return [s.batch_size for s in self.steps]


def first_batch_sizes(grid: Sequence[int], k: int) -> list[int]:
    """``k`` batch sizes of ``grid`` spread evenly in log space, both ends included (all of
    them when ``k >= len(grid)``)."""
    grid = sorted(grid)
    if k >= len(grid):
        return grid
    logs = np.log(grid)
    chosen: list[int] = []
    for t in np.linspace(logs[0], logs[-1], k):
        free = [i for i in range(len(grid)) if grid[i] not in chosen]
        chosen.append(grid[min(free, key=lambda i: abs(logs[i] - t))])
    return sorted(chosen)


def study_stop(plan: Plan, a: Adequacy, bests: Sequence[int | None], done: int, cap: int,
               budget_left: float | None = None) -> str | None:
    """Why one batch size's study stops after a round (None: another round): ``a`` is its
    adequacy now, ``bests`` its best steps after each earlier round (None: none reached the
    target yet), ``done`` its finished trials of at most ``cap``, ``budget_left`` the trained
    examples the plan's budget has left (None: no budget)."""
    if a.status == ADEQUATE:
        return "adequate"
    ago = bests[-plan.patience] if len(bests) >= plan.patience else None
    if a.best_steps is not None and ago is not None and ago / a.best_steps - 1 < plan.plateau:
        return (f"a plateau: the last {plan.patience} round(s) improved the best by "
                f"{ago / a.best_steps - 1:.1%} (< {plan.plateau:.0%})")
    if done >= cap:
        return f"{a.status} at the cap of {cap} trials: {'; '.join(a.reasons) or 'no point'}"
    if budget_left is not None and budget_left <= 0:
        return "the budget is spent"
    return None


def log2_spread(fit: Fit, batch_size: float) -> float:
    """Width of the 95 % range of log2 S(batch_size) over the fit's bootstrap resamples (0
    without resamples)."""
    if not len(fit.samples):
        return 0.0
    s, bn = fit.samples[:, 0], fit.samples[:, 1]
    pred = np.log2(s) + np.log2(1.0 + bn / batch_size)
    lo, hi = np.percentile(pred, [2.5, 97.5])
    return float(hi - lo)


def knee(fit: Fit) -> tuple[float, float]:
    """The batch sizes where the curve bends, as far as the fit knows: the diminishing-returns
    regime (``PERFECT_BELOW`` .. ``MAXIMAL_ABOVE`` x B_crit) stretched over B_crit's 95 %
    interval."""
    lo, hi = fit.ci95.get("b_crit", (fit.b_crit, fit.b_crit))
    return PERFECT_BELOW * min(lo, fit.b_crit), MAXIMAL_ABOVE * max(hi, fit.b_crit)


def next_batch_size(fit: Fit | None, measured: Sequence[int], grid: Sequence[int]
                    ) -> tuple[int, str] | None:
    """The unmeasured batch size to measure next and why; None when all are measured.

    With a fit: of the unmeasured batch sizes in the :func:`knee` (all of them when none is
    there), the one where the bootstrap resamples' fits disagree most about the steps.
    Without one: the batch size farthest (in log space) from every measured one.
    """
    left = [b for b in sorted(grid) if b not in measured]
    if not left:
        return None
    if fit is not None and len(fit.samples):
        lo, hi = knee(fit)
        near = [b for b in left if lo <= b <= hi]
        spreads = {b: log2_spread(fit, b) for b in near or left}
        b = max(spreads, key=lambda x: (spreads[x], -abs(math.log(x / fit.b_crit))))
        where = (f"in the knee ({lo:.4g} .. {hi:.4g})" if near
                 else f"none left in the knee ({lo:.4g} .. {hi:.4g})")
        return b, (f"{where}, where the fit's resamples disagree most (95 % range of log2 steps "
                   f"{spreads[b]:.3f})")

    def gap(x: int) -> float:
        return min(abs(math.log2(x / m)) for m in measured) if measured else math.inf

    b = max(left, key=gap)
    return b, f"no usable fit; farthest from the measured batch sizes ({gap(b):.1f} octaves)"


def warm_start(bests: Mapping[int, Mapping[str, Any]], batch_size: int,
               space: Mapping[str, Param]) -> tuple[dict[str, Any], str] | None:
    """The metaparameters to try first at ``batch_size``, predicted from the best trials'
    params of the batch sizes measured so far (``bests``), and how (one line); None when none
    is measured.

    Between two measured batch sizes, each numeric parameter is interpolated linearly in log B
    between the nearest one below and the nearest one above, on its own scale (log for a log
    parameter; an integer rounded; kept inside its range); a categorical one, and one that only
    one of them has, is the nearer one's (in log B). Outside the measured range it is the
    nearest one's best as it is. No scaling rule is assumed: only that the best moves smoothly
    with B.
    """
    if not bests:
        return None
    below = [b for b in bests if b <= batch_size]
    above = [b for b in bests if b >= batch_size]
    lo = max(below) if below else None
    hi = min(above) if above else None
    if lo is None or hi is None or lo == hi:
        near = lo if lo is not None else hi
        assert near is not None
        return dict(bests[near]), f"B = {near}'s best (the nearest measured batch size)"
    t = math.log(batch_size / lo) / math.log(hi / lo)
    centre = dict(bests[lo if t <= 0.5 else hi])
    for name, p in space.items():
        a, b = bests[lo].get(name), bests[hi].get(name)
        if p.choices is None and a is not None and b is not None:
            centre[name] = _inside(p, math.exp((1 - t) * math.log(a) + t * math.log(b))
                                   if p.log else (1 - t) * float(a) + t * float(b))
    return centre, f"B = {lo}'s and B = {hi}'s bests, interpolated in log B"


def around(centre: Mapping[str, Any], space: Mapping[str, Param], step: float = 1.0,
           tried: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """``centre`` with each numeric parameter alone moved ``step`` octave(s) down and up (a
    log parameter x 2^-step and x 2^step; a linear one by ``step`` / 8 of its range), kept
    inside its range: at most 2 points per numeric parameter, none equal to ``centre``, to
    each other or to a point of ``tried``. One step of a compass (pattern) search."""
    seen = [dict(centre), *map(dict, tried)]
    out: list[dict[str, Any]] = []
    for name, p in space.items():
        if p.choices is None and name in centre:
            assert p.low is not None and p.high is not None
            for sign in (-1, 1):
                v = centre[name] * 2.0 ** (sign * step) if p.log else \
                    centre[name] + sign * step / 8 * (float(p.high) - float(p.low))
                point = {**centre, name: _inside(p, v)}
                if point not in seen:
                    seen.append(point)
                    out.append(point)
    return out


def _inside(p: Param, v: float) -> Any:
    """``v`` kept inside ``p``'s range (rounded for an integer parameter)."""
    assert p.low is not None and p.high is not None
    v = min(max(v, float(p.low)), float(p.high))
    return round(v) if p.integer else v


def trained_examples(batch_size: int, trials: Sequence[TrialRecord]) -> float:
    """Examples the finished trials trained: steps each ran (to the target, the pruning step,
    divergence or the budget) times the batch size."""
    return float(sum((t.stopped_at_step or 0) * batch_size for t in trials if t.finished))


def interval_span(fit: Fit | None) -> float:
    """High / low of B_crit's 95 % bootstrap interval (inf without one)."""
    if fit is None or "b_crit" not in fit.ci95:
        return math.inf
    lo, hi = fit.ci95["b_crit"]
    return hi / lo if lo > 0 else math.inf


def stop_reason(plan: Plan, fit: Fit | None, progress: Progress, grid: Sequence[int]
                ) -> str | None:
    """Why to stop now (one line), or None to go on."""
    if all(b in progress.measured for b in grid):
        return f"every batch size of the spec is measured ({len(grid)})"
    if plan.max_examples is not None and progress.examples >= plan.max_examples:
        return (f"the budget is spent: {progress.examples:.3g} trained examples >= "
                f"{plan.max_examples:.3g}")
    span = interval_span(fit)
    added = progress.steps[plan.first:]  # the batch sizes a fit predicted before they ran
    last = added[-1] if added else None
    if fit is not None and span <= plan.width and last is not None and last.error is not None \
            and last.error <= plan.predict_within:
        return (f"B_crit's 95 % interval spans {span:.3g}x (<= {plan.width:g}x) and B = "
                f"{last.batch_size} was predicted within {last.error:.1%} (<= "
                f"{plan.predict_within:.0%})")
    recent = added[-plan.confirm:]
    if fit is not None and len(recent) == plan.confirm and all(
            s.error is not None and s.error <= plan.predict_within for s in recent):
        return (f"the fit predicted each of the last {plan.confirm} batch sizes added (B = "
                f"{', '.join(str(s.batch_size) for s in recent)}) within "
                f"{max(s.error or 0 for s in recent):.1%} (<= {plan.predict_within:.0%}); "
                f"B_crit's 95 % interval spans {span:.3g}x")
    return None
