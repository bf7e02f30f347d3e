"""The work queue: slots, exact counts, retries with the same params and seed, stale trials."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tuner.sampling import build_sampler
from tuner.storage import open_storage
from tuner.trialqueue import claim, fail, slot_of

SPACE = {"x": FloatDistribution(1e-3, 1.0, log=True), "y": FloatDistribution(0.0, 1.0)}


def study_at(url: str, name: str = "s", sampler: str = "qmc", heartbeat: int | None = None
             ) -> optuna.Study:
    return optuna.create_study(storage=open_storage(url, heartbeat), study_name=name,
                               sampler=build_sampler(sampler, 7, {}, SPACE), load_if_exists=True)


def run_one(study: optuna.Study, n: int) -> optuna.trial.FrozenTrial | None:
    c = claim(study, n)
    if c.trial is None:
        return None
    x = c.trial.suggest_float("x", 1e-3, 1.0, log=True)
    c.trial.suggest_float("y", 0.0, 1.0)
    return study.tell(c.trial, x)


def test_slots_follow_the_quasi_random_sequence_and_stop_at_n(tmp_path: Path) -> None:
    study = study_at(f"sqlite:///{tmp_path / 'q.db'}")
    done = [run_one(study, 5) for _ in range(7)]
    assert done[5] is None and done[6] is None  # never more than N
    trials = study.get_trials()
    assert [slot_of(t) for t in trials] == [0, 1, 2, 3, 4]
    # slot s is the s-th point of Optuna's own QMCSampler on the same space and seed
    ref = optuna.create_study(sampler=build_sampler("qmc", 7, {}, SPACE))  # no slots: a counter
    for t in trials:
        r = ref.ask(SPACE)
        assert r.params == pytest.approx(t.params, rel=1e-12)
    # the cached block of the sequence gives Optuna's own fast-forwarded points
    sampler = build_sampler("qmc", 7, {}, SPACE)
    for slot in (0, 3, 200, 5):
        sampler._slot = slot
        ours = sampler._sample_qmc(study, SPACE)
        assert np.array_equal(ours, optuna.samplers.QMCSampler._sample_qmc(sampler, study, SPACE))


def test_a_failed_trial_is_rerun_with_its_slot_and_params(tmp_path: Path) -> None:
    study = study_at(f"sqlite:///{tmp_path / 'f.db'}")
    run_one(study, 3)
    c = claim(study, 3)
    c.trial.suggest_float("x", 1e-3, 1.0, log=True)
    c.trial.suggest_float("y", 0.0, 1.0)
    failed = fail(study, c.trial, "KeyboardInterrupt: SIGINT")
    assert failed.state == TrialState.FAIL
    assert failed.system_attrs["fail_reason"] == "KeyboardInterrupt: SIGINT"
    while run_one(study, 3):
        pass
    trials = study.get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 3 and sorted(slot_of(t) for t in finished) == [0, 1, 2]
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.params == failed.params and slot_of(retry) == slot_of(failed)
    assert "fail_reason" not in retry.system_attrs


def test_running_trials_count_so_nobody_overshoots(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    a, b = study_at(url), study_at(url)  # two workers' views of one study
    first = claim(a, 2)
    second = claim(b, 2)
    assert first.trial is not None and second.trial is not None
    third = claim(a, 2)
    assert third.trial is None and third.running == 2 and third.finished == 0
    assert {slot_of(t) for t in a.get_trials()} == {0, 1}


def test_a_dead_workers_trial_goes_stale_and_is_rerun(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    dead = study_at(url, heartbeat=1)
    c = claim(dead, 1)  # claimed, heartbeat recorded, then the worker "dies": no more beats
    c.trial.suggest_float("x", 1e-3, 1.0, log=True)
    c.trial.suggest_float("y", 0.0, 1.0)
    live = study_at(url, heartbeat=1)
    assert claim(live, 1).trial is None  # still within its grace period
    time.sleep(3)
    retry = run_one(live, 1)
    assert retry is not None and retry.params == live.get_trials()[0].params
    states = [t.state for t in live.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
