"""The SQL reader (tuner/store/rows.py) gives analysis exactly the records Optuna's API gives,
on SQLite and PostgreSQL, for every kind of stored trial, and for every analysis command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import SMALL_DIGITS, run_cli, write
from tuner.core.errors import UsageError
from tuner.run import runner
from tuner.run import specs as spec_mod
from tuner.store.compat import SCHEMA_HEAD
from tuner.store.rows import Reader, open_reader
from tuner.store.source import ANALYSIS_ATTRS, load, stored_trials
from tuner.store.storage import open_readonly, open_storage, study_attrs, study_name

SPEC = SMALL_DIGITS.replace("batch_sizes = [16, 128]", "batch_sizes = [16, 64, 256]")


def every_kind_of_trial(url: str, spec_path: Path) -> None:
    """Studies as `tuner run` makes them (every attr of the storage contract), holding every
    kind of trial analysis meets: reached, missed, diverged, pruned without a value, failed,
    running, waiting; a duplicate finished slot; a trial without its result attrs; an
    infinite value; intermediate values without a curve (older studies) and with one; extra
    params of other kinds (int, categorical, log); extra attrs analysis does not read."""
    spec = spec_mod.load(spec_path)
    dists = {"learning_rate": FloatDistribution(0.01, 1.0, log=True),
             "one_minus_momentum": FloatDistribution(0.01, 0.5, log=True),
             "width": IntDistribution(8, 64, step=8),
             "act": CategoricalDistribution(["relu", None, 3])}
    storage = open_storage(url)
    for b in spec.batch_sizes:
        study = optuna.create_study(storage=storage, study_name=study_name(spec, b))
        for k, v in study_attrs(spec, b).items():
            study.set_user_attr(k, v)

        def add(slot: int, state: TrialState, value: float | None, attrs: dict,
                inter: dict[int, float] | None = None) -> None:
            p = {"learning_rate": 0.02 + 0.03 * slot, "one_minus_momentum": 0.3 - 0.01 * slot,
                 "width": 8 * (1 + slot % 8), "act": ["relu", None, 3][slot % 3]}
            study.add_trial(create_trial(state=state, value=value, params=p, distributions=dists,
                                         user_attrs={"slot": slot, **attrs},
                                         intermediate_values=inter or {}))

        curve = {"steps": [5, 10], "metrics": {"error": [0.5, 0.1 * b / 16], "loss": [2.0, 1.0]}}
        add(0, TrialState.COMPLETE, 10.0, {"reached": True, "steps_to_target": 10,
                                           "steps_to_target_after": 5, "stopped_at_step": 10,
                                           "wall_seconds": 0.25, "curve": curve,
                                           "device": "cpu", "final_metrics": {"error": 0.1},
                                           'a "quoted", üñí\\ key': [1, "two"]})
        add(1, TrialState.COMPLETE, 400.0, {"reached": False, "stopped_at_step": 400,
                                            "curve": curve}, {5: 0.9, 400: 0.5})
        add(2, TrialState.COMPLETE, float("inf"), {
            "reached": False, "diverged": True, "stopped_at_step": 7,
            "curve": {"steps": [5], "metrics": {"error": [0.9], "loss": [float("nan")]}}})
        add(3, TrialState.PRUNED, None, {"stopped_at_step": 15}, {5: 0.8, 15: float("nan")})
        add(4, TrialState.FAIL, None, {})
        add(5, TrialState.COMPLETE, 30.0, {})  # no result attrs: left out, with a warning
        add(6, TrialState.COMPLETE, 12.0, {"reached": True, "steps_to_target": 12,
                                           "stopped_at_step": 12}, {5: 0.7, 12: 0.05})
        add(6, TrialState.COMPLETE, 9.0, {"reached": True, "steps_to_target": 9,
                                          "stopped_at_step": 9})  # slot 6 again: set aside
        study.enqueue_trial({"learning_rate": 0.5, "one_minus_momentum": 0.1},
                            user_attrs={"slot": 7})  # WAITING
        running = study.ask()  # RUNNING
        running.set_user_attr("slot", 8)


def canon(x: Any) -> Any:
    """``x`` with dataclasses as dicts and NaN as a string, so that == compares everything
    (NaN != NaN)."""
    if dataclasses.is_dataclass(x):
        return canon(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {k: canon(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [canon(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x


def records_equal(url: str, spec: str) -> None:
    """Both read paths give equal SpecStudies (records, attrs, warnings), curves or not."""
    reader = open_reader(url)
    assert isinstance(reader, Reader)
    for curves in (True, False):
        via_sql = load(reader, spec, curves=curves)
        via_optuna = load(open_readonly(url), spec, curves=curves)
        assert canon(via_sql) == canon(via_optuna)
        trials = [t for s in via_sql.studies for t in s.trials]
        assert trials
        if curves:
            assert any(t.curve is not None for t in trials)
        else:
            assert all(t.curve is None for t in trials)  # not read


def trials_equal(url: str) -> None:
    """Every trial of every study, all its user attrs included, as Optuna reads it."""
    reader = open_reader(url)
    assert isinstance(reader, Reader)
    studies = reader.get_all_studies()
    ours = reader.read_trials([s._study_id for s in studies], attr_keys=None)
    theirs = open_readonly(url)
    for s in studies:
        want = [{"number": t.number, "state": t.state, "datetime_complete": t.datetime_complete,
                 "value": t.value, "params": t.params, "user_attrs": t.user_attrs,
                 # read only where there is no curve (tuner.store.rows.Reader.read_trials)
                 "intermediate_values": {} if "curve" in t.user_attrs
                 else t.intermediate_values}
                for t in theirs.get_all_trials(s._study_id, deepcopy=False)]
        assert canon(ours[s._study_id]) == canon(want)
        assert any(math.isnan(t.user_attrs.get("curve", {}).get("metrics", {})
                              .get("loss", [0])[0]) for t in ours[s._study_id])


def summaries_equal(url: str, spec_path: Path) -> None:
    """`tuner run`'s summary points read back through the SQL reader equal Optuna's."""
    spec = spec_mod.load(spec_path)
    studies = {b: optuna.load_study(study_name=study_name(spec, b), storage=url)
               for b in spec.batch_sizes}
    with pytest.MonkeyPatch.context() as mp:  # not through Optuna's trials
        mp.setattr(optuna.Study, "get_trials", lambda *a, **k: pytest.fail("Study.get_trials"))
        ours = runner.points(studies, url)
    assert [p.batch_size for p in ours] == list(spec.batch_sizes)
    assert any(p.best_steps is not None for p in ours) and any(p.n_pruned for p in ours)
    assert canon(ours) == canon(runner.points(studies))  # no url: through Optuna


def test_every_kind_of_trial_reads_the_same_on_sqlite(tmp_path: Path) -> None:
    spec = write(tmp_path, SPEC, "rows.toml")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    every_kind_of_trial(url, spec)
    records_equal(url, str(spec))
    trials_equal(url)
    summaries_equal(url, spec)
    s = load(open_reader(url), str(spec))
    [st] = [x for x in s.studies if x.batch_size == 16]
    by_slot = {t.slot: t for t in st.trials}
    assert st.n_duplicates == 1 and st.n_incomplete_trials == 1
    assert by_slot[2].outcome == "diverged" and by_slot[2].value == math.inf
    assert by_slot[3].outcome == "pruned" and by_slot[3].value is None
    assert by_slot[6].curve == {"steps": [5, 12], "metrics": {"error": [0.7, 0.05]}}
    assert by_slot[0].params["act"] == "relu" and by_slot[1].params["act"] is None
    assert by_slot[2].params["act"] == 3 and isinstance(by_slot[0].params["width"], int)
    assert {t.outcome for t in st.trials} == {"reached", "missed", "diverged", "pruned",
                                              "failed", "running"}


def test_every_kind_of_trial_reads_the_same_on_postgresql(tmp_path: Path, postgres_url: str
                                                          ) -> None:
    spec = write(tmp_path, SPEC, "rows.toml")
    every_kind_of_trial(postgres_url, spec)
    records_equal(postgres_url, str(spec))
    trials_equal(postgres_url)
    summaries_equal(postgres_url, spec)


def test_optunas_path_reads_one_study_at_a_time(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Optuna's API, each study's trials are read when analysis reaches that study, so
    one study's FrozenTrials at a time are held (their peak memory, benchmarks/README.md)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    every_kind_of_trial(url, write(tmp_path, SPEC, "rows.toml"))
    storage = open_readonly(url)
    ids = [s._study_id for s in storage.get_all_studies()]
    read: list[int] = []
    real = storage.get_all_trials
    monkeypatch.setattr(storage, "get_all_trials",
                        lambda i, **kw: read.append(i) or real(i, **kw))
    trials = stored_trials(storage, ids, ANALYSIS_ATTRS, curves=False)
    assert read == [] and len(ids) == 3
    for n, got in enumerate(trials, 1):
        assert read == ids[:n]
        assert [t.number for t in got] == [t.number for t in real(ids[n - 1])]


def test_real_studies_read_the_same_and_every_command_agrees(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real digits run and a real NQM run; then every analysis command's JSON, through the
    reader and through Optuna's API ($TUNER_READER=optuna), on the same storage."""
    url = f"sqlite:///{tmp_path / 'real.db'}"
    digits = write(tmp_path, SMALL_DIGITS.replace("trials = 4", "trials = 6"), "d.toml")
    nqm = Path(__file__).parents[2] / "studies" / "nqm_momentum.toml"
    assert run_cli(["run", str(digits), "--storage", url, "-q"], capsys)[0] == 0
    assert run_cli(["run", str(nqm), "--storage", url, "-q", "--trials", "12", "-b", "64",
                    "-b", "4096", "-b", "1048576"], capsys)[0] == 0
    records_equal(url, str(digits))
    records_equal(url, str(nqm))
    for cmd in (["curve", "--format", "json"], ["edges", "--format", "json"],
                ["sensitivity", "--format", "json"], ["curve", "--format", "json",
                                                      "--target", "loss<=0.5"]):
        outs = []
        for reader in ("sql", "optuna"):
            env = dict(os.environ, TUNER_READER=reader)
            p = subprocess.run([sys.executable, "-c", "from tuner.cli import main; main()",
                                cmd[0], str(nqm), "--storage", url, *cmd[1:]], env=env,
                               capture_output=True, text=True, timeout=300)
            assert p.returncode in (0, 1, 3), p.stderr
            outs.append(json.loads(p.stdout))
        assert outs[0] == outs[1], cmd


def test_another_schema_is_read_through_optuna(tmp_path: Path) -> None:
    """A storage whose schema is not the one the reader knows goes through Optuna, which
    refuses an outdated one in one line."""
    spec = write(tmp_path, SPEC, "rows.toml")
    db = tmp_path / "r.db"
    every_kind_of_trial(f"sqlite:///{db}", spec)
    assert isinstance(open_reader(f"sqlite:///{db}"), Reader)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] \
            == SCHEMA_HEAD
        conn.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    with pytest.raises(UsageError) as err:
        open_reader(f"sqlite:///{db}")
    assert str(err.value).startswith("--storage ") and "optuna storage upgrade" in str(err.value)


def test_schema_head_is_the_installed_optunas(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}")
    assert storage._version_manager.get_head_version() == SCHEMA_HEAD
