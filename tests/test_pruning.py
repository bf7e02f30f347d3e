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


def test_optuna_pruner_can_be_combined() -> None:
    p = build_pruner("median", 1.0, True, {"n_startup_trials": 2})
    assert isinstance(p, LosslessPruner) and isinstance(p.inner, optuna.pruners.MedianPruner)
    assert isinstance(build_pruner("none", 1.0, False, {}), optuna.pruners.NopPruner)


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
