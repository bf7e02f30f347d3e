"""Storing a finished trial in one transaction: the same rows as Optuna's, and a killed run keeps
every trial it stored, whole."""

from __future__ import annotations

import datetime
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import SMALL_NQM as NQM_SPEC
from conftest import TRIAL_ATTRS, write
from tuner.store.persist import store_trial
from tuner.store.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]


def template(state: TrialState, value: float | None) -> optuna.trial.FrozenTrial:
    t = create_trial(
        state=state, value=value,
        params={"lr": 0.03, "layers": 3, "act": "relu"},
        distributions={"lr": FloatDistribution(1e-4, 1.0, log=True),
                       "layers": IntDistribution(1, 8),
                       "act": CategoricalDistribution(["relu", "tanh", None])},
        user_attrs={"reached": True, "steps_to_target": 120, "best_metric": 0.031,
                    "final_metrics": {"error": 0.03, "loss": 0.1}, "none": None,
                    "list": [1, 2.5, "x"]},
        system_attrs={"constraints": [0.0]},
        intermediate_values={1: 2.3, 2: float("inf"), 4: float("-inf"), 8: float("nan"),
                             120: 0.031},
    )
    t.datetime_start = datetime.datetime(2026, 11, 21, 10, 0, 0, 123456)
    t.datetime_complete = t.datetime_start + datetime.timedelta(seconds=1.5)
    return t


def fields(t: optuna.trial.FrozenTrial) -> dict:
    iv = {k: "nan" if math.isnan(v) else v for k, v in t.intermediate_values.items()}
    return {"number": t.number, "state": t.state, "values": t.values, "params": t.params,
            "distributions": t.distributions, "user_attrs": t.user_attrs,
            "system_attrs": t.system_attrs, "intermediate_values": iv,
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete}


@pytest.mark.parametrize("state, value", [(TrialState.COMPLETE, 120.0),
                                          (TrialState.COMPLETE, float("inf")),
                                          (TrialState.PRUNED, None)])
def test_stored_trial_reads_back_as_one_optuna_stored(tmp_path: Path, state: TrialState,
                                                      value: float | None) -> None:
    t = template(state, value)
    read = {}
    for how in ("optuna", "ours"):
        url = f"sqlite:///{tmp_path / how}.db"
        storage = open_storage(url)
        study = optuna.create_study(storage=storage, study_name="s")
        sid = study._study_id
        for i in range(2):  # the trial numbers continue the study's; the attr is updated
            if how == "optuna":
                storage.create_new_trial(sid, template_trial=t)
                storage.set_study_system_attr(sid, "qmc:pos", 7 + i)
            else:
                store_trial(storage, sid, t, {"qmc:pos": 7 + i})
        again = optuna.load_study(study_name="s", storage=url)
        read[how] = [fields(x) for x in again.get_trials(deepcopy=False)]
        assert again._storage.get_study_system_attrs(again._study_id) == {"qmc:pos": 8}
    assert read["ours"] == read["optuna"]
    assert [r["number"] for r in read["ours"]] == [0, 1]


def stored_trials(db: Path) -> int:
    """Trials in the SQLite file, read as another process would (0 before the tables exist)."""
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute("select count(*) from trials").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def params_by_number(url: str) -> dict[tuple[int, int], dict]:
    out = {}
    for s in optuna.get_all_study_summaries(url):
        for t in optuna.load_study(study_name=s.study_name, storage=url).get_trials():
            out[s.user_attrs["batch_size"], t.number] = t.params
    return out


def test_killed_buffered_run_keeps_every_stored_trial_whole_and_resumes(tmp_path: Path) -> None:
    """SIGKILL a fast (buffered) NQM run mid-way: every stored trial has all its attrs and
    curve, and resuming gives exactly the trials of a run that was never killed."""
    trials = 300
    text = NQM_SPEC.replace("trials = 12", f"trials = {trials}").replace(
        'name = "momentum"', 'name = "sgd"').replace(
        "one_minus_momentum = { low = 1e-3, high = 1.0, log = true }\n", "")
    spec = write(tmp_path, text, "nqm.toml")
    cmd = [sys.executable, "-m", "tuner.cli", "run", str(spec), "--quiet", "--storage"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db = tmp_path / "killed.db"
    proc = subprocess.Popen([*cmd, f"sqlite:///{db}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while stored_trials(db) < 50 and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    url = f"sqlite:///{db}"
    stored = optuna.get_all_study_summaries(url)
    n_stored = sum(s.n_trials for s in stored)
    assert 50 <= n_stored < 2 * trials
    for s in stored:
        for t in optuna.load_study(study_name=s.study_name, storage=url).get_trials():
            assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.state
            a = t.user_attrs
            assert TRIAL_ATTRS <= set(a)
            assert all(s <= a["stopped_at_step"] for s in t.intermediate_values)
            if a["reached"]:
                assert max(t.intermediate_values) == a["steps_to_target"] == t.value

    subprocess.run([*cmd, url], cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run([*cmd, f"sqlite:///{tmp_path / 'whole.db'}"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    resumed, whole = params_by_number(url), params_by_number(f"sqlite:///{tmp_path / 'whole.db'}")
    assert len(resumed) == 2 * trials
    assert resumed == whole


def test_sqlite_file_commits_to_a_write_ahead_log(tmp_path: Path) -> None:
    """Each connection: WAL, synchronous NORMAL (a commit is not an fsync; a kill loses none)."""
    from sqlalchemy import text

    storage = open_storage(f"sqlite:///{tmp_path / 'w.db'}")
    optuna.create_study(storage=storage, study_name="w")
    with storage.engine.connect() as con:
        assert con.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert con.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    with sqlite3.connect(tmp_path / "w.db") as con:  # another process's view: the file's mode
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
