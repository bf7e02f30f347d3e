"""One trial: sample params -> ask the workload -> store value and attrs (docs/DESIGN.md contract).

Outcomes:
  reached  -- COMPLETE, value = steps-to-target, constraint 0 (feasible).
  missed   -- COMPLETE, value = the budget in steps, constraint 1 (so never ``best_trial``).
  diverged -- COMPLETE like missed, with ``diverged = True``.
  pruned   -- PRUNED, stopped by the pruner before reaching the target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.analysis.rescore import steps_to
from tuner.core.goal import Goal
from tuner.core.trial import Reporter, TrialRequest, TrialResult
from tuner.run.pruning import GoalsPruner
from tuner.spec import Spec
from tuner.workload.base import Workload


def trial_seed(spec_seed: int, batch_size: int, number: int) -> int:
    """A seed for one trial, derived from the spec seed, batch size and trial number."""
    return int(np.random.SeedSequence([spec_seed, batch_size, number]).generate_state(1)[0])


def suggest(trial: optuna.Trial, spec: Spec) -> dict[str, Any]:
    """Sample every searched metaparameter."""
    out: dict[str, Any] = {}
    for p in spec.space:
        d = p.distribution()
        if isinstance(d, CategoricalDistribution):
            out[p.name] = trial.suggest_categorical(p.name, d.choices)
        elif isinstance(d, IntDistribution):
            out[p.name] = trial.suggest_int(p.name, d.low, d.high, log=d.log)
        else:
            assert isinstance(d, FloatDistribution)
            out[p.name] = trial.suggest_float(p.name, d.low, d.high, log=d.log)
    return out


def outcome(result: TrialResult) -> str:
    """``reached`` | ``diverged`` | ``pruned`` | ``missed``."""
    if result.reached:
        return "reached"
    if result.diverged:
        return "diverged"
    return "pruned" if result.pruned else "missed"


def curve_attr(curve: list[tuple[int, dict[str, float]]]) -> dict[str, Any]:
    """Every metric at every evaluation, by column: ``{"steps": [...], "metrics": {name:
    [...]}}`` (the trial's ``curve`` user attr; analysis re-scores targets from it). A metric
    missing at an evaluation is stored as None."""
    names = list(dict.fromkeys(k for _, m in curve for k in m))
    return {"steps": [s for s, _ in curve],
            "metrics": {k: [m.get(k) for _, m in curve] for k in names}}


def steps_to_goals(curve: dict[str, Any], goals: tuple[Goal, ...]) -> dict[str, int | None]:
    """Goal -> the first evaluation step that met it (None: not met before the trial
    stopped), the ``steps_to_also`` attr of a spec with ``[target] also``."""
    return {str(g): steps_to(curve, g.metric, g.value, g.strict, g.direction) for g in goals}


class Objective:
    """The Optuna objective of one batch-size study (``measure``: ``tuner confirm``'s, which
    also measures the test split and the sharpness where the target is reached).

    Calling it runs one trial. :meth:`start` and :meth:`finish` are its two halves, for a
    worker that trains several trials at once (``[trainer] trials_at_once``): the request
    and the reporter of a claimed trial, then its result told as one trial's.
    """

    def __init__(self, spec: Spec, batch_size: int, workload: Workload, measure: bool = False
                 ) -> None:
        self.spec, self.batch_size, self.workload, self.measure = (spec, batch_size, workload,
                                                                   measure)
        self.max_steps = spec.max_steps(batch_size)
        self.evals = spec.eval_steps(batch_size)

    def __call__(self, trial: optuna.Trial) -> float:
        request, report = self.start(trial)
        return self.finish(trial, self.workload.run(request, report))

    def start(self, trial: optuna.Trial) -> tuple[TrialRequest, Reporter]:
        """Sample the trial's params, record its seed; its request and its reporter (which
        reports each evaluation to Optuna and answers whether to prune)."""
        spec, target = self.spec, self.spec.target
        params = {**spec.fixed, **suggest(trial, spec)}
        # the seed follows the slot (tuner.run.trialqueue): a retry reuses its failed trial's seed
        a = trial.user_attrs
        seed = trial_seed(spec.seed, self.batch_size,
                          a.get("slot", a.get("retry_of", trial.number)))
        trial.set_user_attr("seed", seed)
        request = TrialRequest(
            params=params, optimizer=spec.optimizer, schedule=spec.schedule,
            batch_size=self.batch_size, max_steps=self.max_steps, eval_steps=self.evals,
            target=target, seed=seed, divergence_factor=spec.budget.divergence_factor,
            accelerator=spec.accelerator, precision=spec.precision, devices=spec.devices,
            also=spec.also, train_to_budget=spec.budget.train_to_budget, measure=self.measure,
            landscape=self.measure and a.get("config") == 0 and a.get("seed_index") == 0,
        )
        met: set[str | None] = set()  # goals met so far (None: the target)
        goals = GoalsPruner(spec.pruner.slack, [str(g) for g in spec.also]) if (
            spec.also and spec.pruner.lossless) else None

        def report(step: int, metrics: dict[str, float]) -> bool:
            value = metrics[target.metric]
            trial.report(value, step)  # at the global step: real learning curves
            if not spec.also:
                return not target.reached(value) and trial.should_prune()
            if target.reached(value):
                met.add(None)
            met.update(str(g) for g in spec.also if g.met(metrics.get(g.metric)))
            unmet = [g for g in [None, *map(str, spec.also)] if g not in met]
            return goals is not None and goals.should_prune(trial.study, step, unmet)

        return request, report

    def finish(self, trial: optuna.Trial, r: TrialResult) -> float:
        """Store the result's attrs on the trial; its value (steps-to-target, or the budget).

        Raises:
            optuna.TrialPruned: the trial was pruned.
        """
        spec, max_steps = self.spec, self.max_steps
        kind = outcome(r)
        curve = curve_attr(r.curve)  # every metric at every evaluation, by column
        attrs = {
            "reached": r.reached,
            "steps_to_target": r.steps_to_target,
            "steps_to_target_after": r.steps_after,
            "diverged": r.diverged,
            "stopped_at_step": r.stopped_at_step,
            "examples_seen": r.examples_seen,
            "wall_seconds": r.wall_seconds,
            "eval_seconds": r.eval_seconds,
            "eval_share": r.eval_seconds / r.wall_seconds if r.wall_seconds > 0 else 0.0,
            "step_seconds": r.step_seconds,
            **({"at_target": r.at_target} if r.at_target is not None else {}),
            "best_metric": r.best_metric,
            "final_metrics": r.curve[-1][1] if r.curve else None,
            "curve": curve,
            **({"steps_to_also": steps_to_goals(curve, spec.also)} if spec.also else {}),
            "max_steps": max_steps,
            "outcome": kind,
            "device": r.device,
            "devices": spec.devices,
            **({"trials_at_once": r.trials_at_once} if r.trials_at_once > 1 else {}),
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_constraint("reached", 0.0 if r.reached else 1.0)
        if kind == "pruned":
            raise optuna.TrialPruned(f"pruned at step {r.stopped_at_step}")
        return float(r.steps_to_target if r.reached else max_steps)
