"""The lossless pruner: its rule, and that it never changes the best trial of a real study."""

from __future__ import annotations

import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import SMALL_DIGITS
from tuner.run import specs as spec_mod
from tuner.run.pruning import LosslessPruner, best_steps, build_pruner
from tuner.run.savings import savings


def study_with_best(steps: list[int | None]) -> optuna.Study:
    """An in-memory study whose COMPLETE trials reached at ``steps`` (None: missed)."""
    study = optuna.create_study()
    for s in steps:
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=float(s or 1000),
            params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"reached": s is not None, "steps_to_target": s},
        ))
    return study


def prune_at(study: optuna.Study, pruner: LosslessPruner, step: int) -> bool:
    trial = study.ask()
    trial.report(0.5, step)
    frozen = study._storage.get_trial(trial._trial_id)
    return pruner.prune(study, frozen)


def test_best_steps_reads_reached_not_values() -> None:
    assert best_steps(study_with_best([None, 300, 200, None])) == 200
    assert best_steps(study_with_best([None])) is None


@pytest.mark.parametrize("slack, step, expected", [
    (1.0, 200, False),  # equal to the best: could still tie it
    (1.0, 201, True),
    (1.5, 300, False),
    (1.5, 301, True),
])
def test_prunes_only_past_slack_times_best(slack: float, step: int, expected: bool) -> None:
    study = study_with_best([400, 200])
    assert prune_at(study, LosslessPruner(slack), step) is expected


def test_never_prunes_before_any_trial_reached() -> None:
    study = study_with_best([None, None])
    assert not prune_at(study, LosslessPruner(1.0), 10**9)


def test_slack_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        LosslessPruner(0.9)


def combined_study(pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """An in-memory study with two finished trials and their learning curves: reached at 100
    and 200 steps; the median of their values at step 50 is 0.25."""
    study = optuna.create_study(pruner=pruner)
    for steps, curve in ((100, {10: 0.5, 50: 0.2, 100: 0.05}),
                         (200, {10: 0.5, 50: 0.3, 100: 0.2, 200: 0.05})):
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=float(steps), intermediate_values=curve,
            params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"reached": True, "steps_to_target": steps}))
    return study


def pruned_after(pruner: optuna.pruners.BasePruner, value: float, step: int) -> bool:
    """Whether a new trial of :func:`combined_study` that reports ``value`` at ``step`` is
    pruned, asked the way the objective asks (``Trial.should_prune``)."""
    study = combined_study(pruner)
    trial = study.ask()
    trial.report(value, step)
    return trial.should_prune()


# (value, step): worse than the median at step 50 but within the best's 100 steps; past the
# best's 100 steps at a step nobody else reported (the median rule has nothing to compare);
# better than the median, within 100 steps.
MEDIAN_ONLY, LOSSLESS_ONLY, NEITHER = (0.9, 50), (0.01, 150), (0.1, 50)


def test_optuna_pruner_combined_with_lossless_prunes_by_either_rule() -> None:
    def pruner(name: str, lossless: bool) -> optuna.pruners.BasePruner:  # fresh per study
        opts = {"n_startup_trials": 2, "n_warmup_steps": 0} if name == "median" else {}
        return build_pruner(name, 1.0, lossless, opts)

    def combined() -> optuna.pruners.BasePruner:
        return pruner("median", True)

    def median() -> optuna.pruners.BasePruner:
        return pruner("median", False)

    def lossless() -> optuna.pruners.BasePruner:
        return pruner("lossless", True)

    def none() -> optuna.pruners.BasePruner:
        return pruner("none", False)

    # each rule alone prunes its own case and not the other's
    assert pruned_after(median(), *MEDIAN_ONLY) and not pruned_after(median(), *LOSSLESS_ONLY)
    assert pruned_after(lossless(), *LOSSLESS_ONLY) and not pruned_after(lossless(), *MEDIAN_ONLY)
    # together: either rule prunes, and a trial doing well in both is left to run
    assert pruned_after(combined(), *MEDIAN_ONLY)
    assert pruned_after(combined(), *LOSSLESS_ONLY)
    assert not pruned_after(combined(), *NEITHER)
    # no pruner prunes nothing
    assert not any(pruned_after(none(), *c) for c in (MEDIAN_ONLY, LOSSLESS_ONLY, NEITHER))


def test_lossless_pruning_keeps_best_and_saves_steps(tmp_path: Path) -> None:
    text = SMALL_DIGITS.replace("value = 0.12", "value = 0.08").replace(
        "max_steps = 400", "max_steps = 800")
    spec = spec_mod.parse(tomllib.loads(text), "lossless.toml")
    pruned, full = savings(spec, tmp_path, (16,), trials=8)
    print(f"\nlossless pruning: {pruned.total_steps} steps vs {full.total_steps} without "
          f"({pruned.total_steps / full.total_steps:.2f}x), same best {pruned.best}")
    assert pruned.best == full.best
    assert pruned.best[16][1] is not None
    assert pruned.total_steps < full.total_steps
