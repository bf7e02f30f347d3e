"""The work queue: slots, exact counts, retries with the same params and seed, stale trials."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tuner.run.sampling import build_sampler
from tuner.store.storage import open_storage
from tuner.run.trialqueue import claim, fail, slot_of

SPACE = {"x": FloatDistribution(1e-3, 1.0, log=True), "y": FloatDistribution(0.0, 1.0)}


def study_at(url: str, name: str = "s", sampler: str = "qmc", heartbeat: int | None = None
             ) -> optuna.Study:
    return optuna.create_study(storage=open_storage(url, heartbeat), study_name=name,
                               sampler=build_sampler(sampler, 7, {}, SPACE), load_if_exists=True)


def backdate(study: optuna.Study, trial_id: int, seconds: float) -> None:
    """Move the trial's last heartbeat, or (it has none) its start, ``seconds`` into the past,
    in storage: as if its worker had been silent that long, without waiting for it."""
    import datetime as dt

    import sqlalchemy as sa
    from optuna.storages._rdb import models  # the tables tuner.store.compat reads

    from tuner.store.compat import heartbeats, rdb

    _, beats = heartbeats(study._storage, study._study_id)
    ago = dt.timedelta(seconds=seconds)
    if trial_id in beats:
        table = models.TrialHeartbeatModel.__table__
        values = {"heartbeat": beats[trial_id] - ago}
    else:
        table = models.TrialModel.__table__
        values = {"datetime_start": study._storage.get_trial(trial_id).datetime_start - ago}
    with rdb(study._storage).engine.begin() as conn:
        assert conn.execute(sa.update(table).where(table.c.trial_id == trial_id)
                            .values(**values)).rowcount == 1


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
    # slot s is the s-th point of the sequence (test_slot_points_are_optunas_own_qmc_points)
    sampler = build_sampler("qmc", 7, {}, SPACE)
    assert [t.params for t in trials] == [sampler.point(slot_of(t)) for t in trials]


MIXED = {"lr": FloatDistribution(1e-4, 1.0, log=True), "m": FloatDistribution(0.0, 1.0),
         "k": IntDistribution(1, 9), "width": IntDistribution(8, 1024, log=True),
         "f": FloatDistribution(0.0, 1.0, step=0.1),
         "act": CategoricalDistribution(("relu", "tanh", "gelu"))}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # QMCSampler
@pytest.mark.parametrize("qmc_type,scramble", [("halton", True), ("sobol", True),
                                               ("halton", False), ("sobol", False)])
def test_slot_points_are_optunas_own_qmc_points(qmc_type: str, scramble: bool) -> None:
    # Optuna's own QMCSampler on the same space and seed: it samples trial 0 at random (it learns
    # the space from it), then trial k + 1 is the sequence's point k (its sample id k)
    ref = optuna.create_study(sampler=optuna.samplers.QMCSampler(
        qmc_type=qmc_type, scramble=scramble, seed=7, warn_independent_sampling=False))
    expected = []
    for _ in range(262):
        t = ref.ask(MIXED)
        ref.tell(t, 0.0)
        expected.append(t.params)
    ours = build_sampler("qmc", 7, {"qmc_type": qmc_type, "scramble": scramble}, MIXED)
    # out of order: the cached block of the sequence grows past 128 and 256 rows
    for slot in (0, 3, 200, 5, 127, 128, 129, 255, 256, 260, 1, 2, *range(6, 40)):
        assert ours.point(slot) == expected[slot + 1], slot  # the same floats, not approx
    # and through a study: a trial of slot s gets point s
    study = optuna.create_study(sampler=ours)
    for slot in (4, 0, 129):
        study.enqueue_trial({}, user_attrs={"slot": slot})
        assert study.ask(MIXED).params == expected[slot + 1]


def test_a_failed_trial_is_rerun_with_its_slot_and_params(tmp_path: Path) -> None:
    study = study_at(f"sqlite:///{tmp_path / 'f.db'}")
    run_one(study, 3)
    c = claim(study, 3)
    c.trial.suggest_float("x", 1e-3, 1.0, log=True)
    c.trial.suggest_float("y", 0.0, 1.0)
    for k, v in {"seed": 11, "worker": "a:1", "omp_num_threads": "4",
                 "cuda_visible_devices": "1"}.items():  # as runner._mark_worker writes them
        c.trial.set_user_attr(k, v)
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
    # the seed is the slot's; who ran it (and with which threads, GPU) is the new worker's
    assert retry.user_attrs["seed"] == 11
    assert not {"worker", "omp_num_threads", "cuda_visible_devices"} & set(retry.user_attrs)


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
    backdate(live, c.trial._trial_id, 3)  # silent for 3 s > 2 x its 1 s interval
    retry = run_one(live, 1)
    assert retry is not None and retry.params == live.get_trials()[0].params
    states = [t.state for t in live.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def suggest(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 1e-3, 1.0, log=True)
    trial.suggest_float("y", 0.0, 1.0)
    return x


def test_a_slot_that_fails_again_and_again_is_requeued_once_per_failure(tmp_path: Path) -> None:
    # Optuna's retry callback copies `failed_trial` into a retry of a retry, so a queue kept by
    # those attrs re-queued a failed retry on every claim: slot 0 ran forever, later slots never.
    study = study_at(f"sqlite:///{tmp_path / 'again.db'}")
    failed_params = []
    for attempt in range(4):
        c = claim(study, 3)
        assert slot_of(c.trial._cached_frozen_trial) == 0 or attempt == 0
        suggest(c.trial)
        failed_params.append(fail(study, c.trial, f"RuntimeError: attempt {attempt}").params)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert [slot_of(t) for t in waiting] == [0]  # exactly one copy queued per failure
    while run_one(study, 3):
        pass
    trials = study.get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(slot_of(t) for t in finished) == [0, 1, 2]
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    [slot0] = [t for t in finished if slot_of(t) == 0]
    assert all(p == slot0.params for p in failed_params)  # every retry ran slot 0's point
    assert claim(study, 3).trial is None and len(study.get_trials()) == len(trials)


def test_duplicate_waiting_copies_of_a_finished_slot_are_set_aside(tmp_path: Path) -> None:
    # what older versions left behind: WAITING copies of a slot that has finished
    study = study_at(f"sqlite:///{tmp_path / 'dup.db'}")
    first = run_one(study, 3)
    for _ in range(2):
        study.enqueue_trial(first.params, user_attrs={"slot": 0})
    c = claim(study, 3)
    assert c.superseded == 2 and slot_of(study.get_trials()[-1]) == 1
    suggest(c.trial)
    study.tell(c.trial, 0.5)
    while run_one(study, 3):
        pass
    trials = study.get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(slot_of(t) for t in finished) == [0, 1, 2]
    dups = [t for t in trials if t.state == TrialState.FAIL]
    assert len(dups) == 2 and all("superseded: slot 0" in t.system_attrs["fail_reason"]
                                  for t in dups)


def test_a_trial_that_never_beat_is_recovered_after_the_grace_period(tmp_path: Path) -> None:
    # a worker killed between ask() and its first heartbeat left a RUNNING trial without a
    # heartbeat row; Optuna never calls such a trial stale, so every later worker waited forever
    url = f"sqlite:///{tmp_path / 'never.db'}"
    dead = study_at(url, heartbeat=1)
    dead.enqueue_trial({}, user_attrs={"slot": 0})
    orphan = dead.ask()  # claimed the way an older version (or a kill at the wrong time) leaves it
    live = study_at(url, heartbeat=1)
    assert claim(live, 1).trial is None  # within the grace period: its worker may be alive
    backdate(live, orphan._trial_id, 2.5)  # started 2.5 s ago > 2 x 1 s, and never beat
    c = claim(live, 1)
    assert c.trial is not None and [t.number for t in c.stale] == [orphan.number]
    assert "never sent a heartbeat" in c.stale[0].system_attrs["fail_reason"]
    assert slot_of(live.get_trials()[c.trial.number]) == 0


def test_staleness_is_judged_by_the_running_trials_own_interval(tmp_path: Path) -> None:
    # a worker on --heartbeat 1 used to fail the live trial of a worker on the default 30 s
    url = f"sqlite:///{tmp_path / 'own.db'}"
    slow_beats = study_at(url, heartbeat=30)
    c = claim(slow_beats, 1)  # beats now, next in 30 s
    fast = study_at(url, heartbeat=1)
    backdate(fast, c.trial._trial_id, 10)  # stale by the checker's 2 x 1 s, alive by its 2 x 30 s
    again = claim(fast, 1)
    assert again.trial is None and not again.stale
    assert [t.state for t in fast.get_trials()] == [TrialState.RUNNING]
    assert fast.get_trials()[0].system_attrs["heartbeat_interval"] == 30  # stored with the trial


def test_ctrl_c_while_claiming_fails_the_claimed_trial_at_once(tmp_path: Path) -> None:
    # SIGINT arriving while a worker waits for the study lock is held until the claim is
    # written; the trial it claimed was then left RUNNING until the grace period
    import os
    import signal
    import threading
    from functools import partial

    from tuner.store.locking import study_lock
    from tuner.run.runner import drain
    from tuner.run.signals import stop_cleanly

    url = f"sqlite:///{tmp_path / 'cc.db'}"
    study = study_at(url, heartbeat=30)
    lock = partial(study_lock, url, "s")
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock():
            held.set()
            release.wait(10)

    def blocked() -> bool:  # this process waits for a flock: a blocked one shows as "->"
        return any("-> FLOCK" in line and f" {os.getpid()} " in line
                   for line in Path("/proc/locks").read_text().splitlines())

    def interrupt() -> None:
        for _ in range(1000):  # until the main thread is blocked on the lock (10 s at most)
            if blocked():
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        release.set()

    threading.Thread(target=holder).start()
    held.wait(5)
    threading.Thread(target=interrupt).start()
    ran = []
    with stop_cleanly(), pytest.raises(KeyboardInterrupt):
        drain(study, 2, lambda t: ran.append(t) or 1.0, lock, [], lambda s: None)
    assert not ran
    [t, *rest] = study.get_trials()
    assert t.state == TrialState.FAIL and t.system_attrs["fail_reason"] == (
        "KeyboardInterrupt: SIGINT")
    assert [slot_of(r) for r in rest if r.state == TrialState.WAITING] == [0]


def test_scipy_stats_is_imported_only_to_sample_a_point() -> None:
    # scipy.stats (for its QMC engines) is ~0.8 s of a worker's start-up: a `tuner run` with
    # nothing left to run, and the launcher of --workers, never sample a point
    import subprocess
    import sys

    code = ("import sys\nfrom tuner.cli import main\nimport tuner.run.runner\n"
            "from tuner.run.sampling import build_sampler\n"
            "from optuna.distributions import FloatDistribution\n"
            "assert 'scipy.stats' not in sys.modules, 'imported before any point'\n"
            "s = build_sampler('qmc', 0, {}, {'x': FloatDistribution(0.1, 1.0)})\n"
            "assert 'scipy.stats' not in sys.modules, 'imported by building the sampler'\n"
            "assert 0.1 <= s.point(3)['x'] <= 1.0\n"
            "assert 'scipy.stats' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr[-2000:]
