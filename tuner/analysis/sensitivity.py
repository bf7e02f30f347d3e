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

import numpy as np
import optuna

from tuner.analysis.adequacy import Adequacy
from tuner.analysis.curves import best
from tuner.analysis.records import BatchStudy, TrialRecord, good_trials

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
    importance_trials: int = 0  # the finished trials the importances come from


def counts(study: BatchStudy) -> dict[str, int]:
    """Trials per outcome."""
    return {o: sum(t.outcome == o for t in study.trials) for o in OUTCOMES}


#: fANOVA's random forest costs ~4.6 s for 1,000 trials of two parameters here: importances
#: use at most this many finished trials (a seeded random subset of a larger study).
MAX_IMPORTANCE_TRIALS = 256


def importance_trials(study: BatchStudy, seed: int = 0) -> list[TrialRecord]:
    """The finished trials :func:`importances` uses (all of them, or a seeded random subset
    of :data:`MAX_IMPORTANCE_TRIALS`, in trial order)."""
    done = [t for t in study.trials if t.value is not None and t.params
            and t.outcome in ("reached", "missed", "diverged")]
    if len(done) <= MAX_IMPORTANCE_TRIALS:
        return done
    pick = np.random.default_rng(seed).choice(len(done), MAX_IMPORTANCE_TRIALS, replace=False)
    return [done[i] for i in sorted(pick)]


def importances(study: BatchStudy, seed: int = 0, trials: list[TrialRecord] | None = None
                ) -> dict[str, float] | None:
    """fANOVA importances of the params for log steps (missed trials at their budget), over
    ``trials`` (default :func:`importance_trials`).

    None when fewer than 3 finished trials or Optuna cannot compute them. A single searched
    parameter explains all the variance: 1.0, without fitting the forest (what Optuna returns).
    """
    space = study.search_space
    done = importance_trials(study, seed) if trials is None else trials
    if len(done) < 3 or not space:
        return None
    searched = [k for k in space if any(k in t.params for t in done)]
    if len(searched) == 1:
        return {searched[0]: 1.0}
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
    picked = importance_trials(study)
    s.importances = importances(study, trials=picked)
    s.importance_trials = len(picked) if s.importances is not None else 0
    return s
