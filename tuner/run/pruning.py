"""The lossless pruner: stop a trial only once it can no longer become the best.

A trial still short of the target at step s will need more than s steps. If s already exceeds
``slack x`` the fewest steps-to-target any finished trial of the study reached, it cannot beat that
trial (for ``slack >= 1``), so stopping it never changes which trial is best. Optionally combined
with one of Optuna's own pruners (then pruning is no longer lossless).

:func:`savings` measures what it saves: the same seeded trials with and without pruning
(``benchmarks/pruning_savings.py``, and a test).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import optuna
from optuna.pruners import BasePruner
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from tuner.spec import OPTUNA_PRUNERS

if TYPE_CHECKING:
    pass


def best_steps(study: Study, goal: str | None = None) -> int | None:
    """Fewest steps-to-target among the study's COMPLETE trials that reached the target (with
    ``goal``, one of the spec's ``[target] also`` goals: the fewest steps to it, from the
    trials' ``steps_to_also`` attr)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if goal is None:
        steps = [t.user_attrs.get("steps_to_target") for t in done if t.user_attrs.get("reached")]
    else:
        steps = [(t.user_attrs.get("steps_to_also") or {}).get(goal) for t in done]
    # a trial whose attrs were lost (deleted by hand, a half-copied storage) is no evidence
    steps = [s for s in steps if isinstance(s, int) and not isinstance(s, bool)]
    return min(steps) if steps else None


class LosslessPruner(BasePruner):
    """Prune once ``step > slack x best steps-to-target so far`` (see the module docstring).

    The best is read from storage when a new trial starts and at most every ``refresh_seconds``
    after, not at every evaluation: a stale best is never smaller than the true one, so it can
    only prune later, never wrongly.
    """

    def __init__(self, slack: float = 1.0, inner: BasePruner | None = None,
                 refresh_seconds: float = 5.0) -> None:
        if slack < 1.0:
            raise ValueError(f"slack must be >= 1 to be lossless, got {slack}")
        self.slack = slack
        self.inner = inner
        self.refresh_seconds = refresh_seconds
        self._best: tuple[str, int, float, int | None] | None = None  # study, trial, time, best

    def threshold(self, study: Study, trial: FrozenTrial) -> float | None:
        """The step past which ``trial`` is pruned (None while no trial has reached)."""
        now = time.monotonic()
        c = self._best
        key = (study.study_name, trial.number)
        if c is None or c[:2] != key or now - c[2] > self.refresh_seconds:
            c = self._best = (*key, now, best_steps(study))
        return None if c[3] is None else self.slack * c[3]

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """Whether to stop ``trial`` at its last reported step."""
        step = trial.last_step
        if step is None:
            return False
        limit = self.threshold(study, trial)
        if limit is not None and step > limit:
            return True
        return self.inner is not None and self.inner.prune(study, trial)


def build_pruner(name: str, slack: float, lossless: bool, options: dict) -> BasePruner:
    """The study's pruner from the spec's ``[pruner]`` table."""
    inner = None
    if name in OPTUNA_PRUNERS:
        inner = getattr(optuna.pruners, OPTUNA_PRUNERS[name])(**options)
    if lossless:
        return LosslessPruner(slack, inner)
    return inner if inner is not None else optuna.pruners.NopPruner()


class GoalsPruner:
    """Lossless pruning for a spec with ``[target] also``: a trial is stopped at step ``s``
    only when, for every goal it has not met yet (the target included), some finished trial
    met that goal in fewer than ``s / slack`` steps. Then it can set no new best for any goal,
    so every goal's best stays exact. Bests are re-read at most every ``refresh_seconds`` (a
    stale best is never smaller than the true one: it can only prune later)."""

    def __init__(self, slack: float, goals: list[str], refresh_seconds: float = 5.0) -> None:
        self.slack = slack
        self.goals = goals  # None stands for the spec's target
        self.refresh_seconds = refresh_seconds
        self._read = -float("inf")
        self._bests: dict[str | None, int | None] = {}

    def should_prune(self, study: Study, step: int, unmet: list[str | None]) -> bool:
        """Whether a trial at ``step`` that has not met the goals ``unmet`` can be stopped."""
        if not unmet:
            return False
        now = time.monotonic()
        if now - self._read > self.refresh_seconds:
            self._bests = {g: best_steps(study, g) for g in [None, *self.goals]}
            self._read = now
        return all(self._bests.get(g) is not None and step > self.slack * self._bests[g]
                   for g in unmet)
