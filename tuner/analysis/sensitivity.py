"""Sensitivity of steps-to-target to the metaparameters, per batch size.

The "good region" of a parameter is its range among trials within ``factor`` (default 1.25) of the
best steps; Shallue et al. saw it shrink as batch size grows. A trial pruned at step s is known to
need more than s steps: if s >= factor x best it is outside the good region; otherwise it is
"unknown". The lossless pruner with slack >= factor never leaves unknowns.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import optuna

from tuner.analysis.adequacy import Adequacy
from tuner.analysis.curves import best
from tuner.analysis.records import BatchStudy, good_trials

OUTCOMES = ("reached", "missed", "pruned", "diverged", "failed")


@dataclass
class Sensitivity:
    """One batch size's sensitivity summary."""

    batch_size: int
    counts: dict[str, int]
    best_steps: int | None
    factor: float
    n_good: int = 0
    good_region: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_unknown: int = 0
    slack: float | None = None
    importances: dict[str, float] | None = None
    duplicates_set_aside: int = 0  # finished trials of an already finished slot (load.py)
    adequacy: Adequacy | None = None  # the tuning-adequacy verdict, when assessed


def counts(study: BatchStudy) -> dict[str, int]:
    """Trials per outcome."""
    return {o: sum(t.outcome == o for t in study.trials) for o in OUTCOMES}


def importances(study: BatchStudy, seed: int = 0) -> dict[str, float] | None:
    """fANOVA importances of the params for log steps (missed trials at their budget).

    None when fewer than 3 finished trials or Optuna cannot compute them.
    """
    space = study.search_space
    done = [t for t in study.trials if t.value is not None and t.params
            and t.outcome in ("reached", "missed", "diverged")]
    if len(done) < 3 or not space:
        return None
    # Optuna's fANOVA evaluator works on a study: an in-memory one, of the records' trials
    tmp = optuna.create_study()
    tmp.add_trials([optuna.trial.create_trial(
        params={k: v for k, v in t.params.items() if k in space}, value=t.value,
        distributions={k: space[k].distribution() for k in t.params if k in space})
        for t in done])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(
                tmp, target=lambda t: math.log(t.value),
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)))
    except (RuntimeError, ValueError):
        return None


def sensitivity(study: BatchStudy, factor: float = 1.25, tuning: Adequacy | None = None
                ) -> Sensitivity:
    """Counts, good region, unknown pruned trials and importances of one batch-size study
    (with ``tuning``, its adequacy verdict, carried along)."""
    b = best(study.trials)
    slack = study.attrs.get("pruner", {}).get("slack")
    s = Sensitivity(study.batch_size, counts(study), b.steps_to_target if b else None, factor,
                    slack=slack, duplicates_set_aside=study.n_duplicates, adequacy=tuning)
    if b is not None:
        assert b.steps_to_target is not None
        limit = factor * b.steps_to_target
        good = good_trials(study.trials, factor)
        s.n_good = len(good)
        for name, p in study.search_space.items():
            if p.choices is None:
                values = [t.params[name] for t in good if name in t.params]
                if values:
                    s.good_region[name] = (min(values), max(values))
        s.n_unknown = sum(1 for t in study.trials if t.outcome == "pruned"
                          and (t.stopped_at_step or 0) < limit)
    s.importances = importances(study)
    return s
