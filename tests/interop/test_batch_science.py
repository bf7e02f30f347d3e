"""``tuner import batch-science`` / ``tuner export batch-science`` on directories written in
batch_science's published layout (tests/interop/bsdata.py), through the real CLI and a real
SQLite storage."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import SMALL_NQM, run_cli, write
from bsdata import their_steps_to_result, write_workload
from tuner.interop import batch_science as bs

NAME = "fashion_mnist.simple_cnn.nesterov_momentum"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "batch_science"
    write_workload(root)
    return root


def _import(root: Path, url: str, capsys, *extra: str) -> tuple[int, str, str]:
    return run_cli(["import", "batch-science", str(root), "--storage", url, *extra], capsys)


def _curve(spec: str, url: str, capsys, *extra: str) -> dict:
    code, out, err = run_cli(["curve", spec, "--storage", url, "--format", "json",
                              "--n-boot", "0", *extra], capsys)
    assert code == 0, err
    return json.loads(out)


def _n_trials(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("select count(*) from trials").fetchone()[0]


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.2, 0.12])
def test_steps_to_result_equal_batch_science_semantics(data, tmp_path, capsys, threshold):
    url = f"sqlite:///{tmp_path / 'bs.db'}"
    code, out, err = _import(data, url, capsys)
    assert code == 0, err
    wdir = data / "fashion_mnist" / "simple_cnn" / "nesterov_momentum"
    theirs = their_steps_to_result(wdir, "val/classification_error", threshold)
    c = _curve(NAME, url, capsys, "--target", f"val/classification_error<{threshold}")
    ours = {p["batch_size"]: p for p in c["points"]}
    assert set(ours) == set(theirs)
    for b, hit in theirs.items():
        p = ours[b]
        if hit is None:
            assert p["best_steps"] is None, (b, p)
            continue
        step, trial_id = hit
        assert p["best_steps"] == step, (b, p["best_steps"], hit)
        # trials are stored in trial-id order: number = position
        ids = sorted(int(d.name) for d in (wdir / str(b)).iterdir() if d.is_dir())
        assert ids[p["best_trial"]] == trial_id


def test_statuses_map_to_outcomes_and_parameters_to_our_space(data, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'bs.db'}"
    assert _import(data, url, capsys)[0] == 0
    c = _curve(NAME, url, capsys)
    wdir = data / "fashion_mnist" / "simple_cnn" / "nesterov_momentum"
    for p in c["points"]:
        st = bs.read_study(wdir / str(p["batch_size"]))
        n = {s: sum(t.status == s for t in st.trials) for s in bs.STATUSES}
        assert p["n_diverged"] == n["INFEASIBLE"]
        assert p["n_failed"] == n["INCOMPLETE"]
        assert p["n_reached"] + p["n_missed"] == n["COMPLETE"]
        assert p["n_reached"] >= 1  # the default target: every batch size reached it
        best = st.trials[p["best_trial"]].metadata["parameters"]
        assert p["best_params"]["learning_rate"] == best["learning_rate"]
        assert p["best_params"]["one_minus_momentum"] == pytest.approx(1 - best["momentum"])
        assert p["best_params"]["label_smoothing"] in (0.0, 0.01, 0.1)
    # the default target is the loosest value every batch size reached, so at least one
    # batch size reached it only just
    t = c["target"]
    assert t["metric"] == "val/classification_error" and t["direction"] == "minimize"


def test_infeasible_trials_never_reach_even_at_a_loose_target(data, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'bs.db'}"
    assert _import(data, url, capsys)[0] == 0
    c = _curve(NAME, url, capsys, "--target", "val/classification_error<0.95")
    for p in c["points"]:
        assert p["best_steps"] == 0  # every COMPLETE trial starts below 0.95
        assert p["n_diverged"] > 0 or p["batch_size"] != 16


def test_edges_sensitivity_report_run_on_imported_studies(data, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'bs.db'}"
    assert _import(data, url, capsys)[0] == 0
    code, out, err = run_cli(["edges", NAME, "--storage", url, "--format", "json"], capsys)
    assert code in (0, 1, 3), err
    found = json.loads(out)[NAME]
    assert {a["batch_size"] for a in found["adequacy"]} == {16, 64, 256, 1024}
    assert all("tuner run" not in adv for a in found["adequacy"] for adv in a["advice"])
    code, out, err = run_cli(["sensitivity", NAME, "--storage", url, "--target",
                              "val/cross_entropy_error<0.9"], capsys)
    assert code == 0, err
    assert "one_minus_momentum" in out
    code, out, err = run_cli(["report", NAME, "--storage", url, "--out",
                              str(tmp_path / "rep"), "--n-boot", "50"], capsys)
    assert code == 0, err
    assert NAME in (tmp_path / "rep" / "index.html").read_text()


def test_reimport_adds_nothing_and_other_data_is_refused(data, tmp_path, capsys):
    db = tmp_path / "bs.db"
    url = f"sqlite:///{db}"
    assert _import(data, url, capsys)[0] == 0
    n = _n_trials(db)
    code, out, _ = _import(data, url, capsys)
    assert code == 0 and "already stored, nothing written" in out
    assert _n_trials(db) == n
    other = tmp_path / "other"
    write_workload(other, seed=1)
    code, _, err = _import(other, url, capsys)
    assert code == 2 and f"--name {NAME}" in err and "already stored with other data" in err
    assert _n_trials(db) == n
    code, out, err = _import(other, url, capsys, "--name", "seed1")  # under another name: fine
    assert code == 0, err
    assert _n_trials(db) == 2 * n
    # a stored target is part of what was imported: another one is other data
    code, _, err = _import(data, url, capsys, "--target", "val/classification_error<0.3")
    assert code == 2


def test_a_study_cut_short_by_a_killed_import_is_replaced(data, tmp_path, capsys):
    import optuna

    db = tmp_path / "bs.db"
    url = f"sqlite:///{db}"
    assert _import(data, url, capsys)[0] == 0
    n = _n_trials(db)
    # what a kill after the trials but before the fingerprint leaves: no spec_fingerprint
    with sqlite3.connect(db) as c:
        c.execute("delete from study_user_attributes where key = 'spec_fingerprint' and "
                  "study_id = (select study_id from studies where study_name = ?)",
                  (f"{NAME}.B64.seed0",))
    code, _, err = run_cli(["curve", NAME, "--storage", url], capsys)
    assert code == 0 and "skipping study" in err and "B64" in err
    code, out, err = _import(data, url, capsys)
    assert code == 0, err
    assert _n_trials(db) == n  # replaced, not duplicated
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    assert names.count(f"{NAME}.B64.seed0") == 1
    assert len(_curve(NAME, url, capsys)["points"]) == 4


@pytest.mark.parametrize("breakage, key", [
    (lambda d: (d / "16" / "study.json").write_text('{"batch_size": 16}'), "dataset"),
    (lambda d: _edit(d / "64" / "3" / "metadata.json", status="DONE"), "status"),
    (lambda d: _edit(d / "64" / "study.json", parameter_configs={
        "learning_rate": {"type": "DOUBLE", "scale": "CUBIC", "min_value": 1, "max_value": 2}}),
     "parameter_configs.learning_rate.scale"),
    (lambda d: (d / "256" / "2" / "measurements.csv").write_text("a,b\n1,2\n"), "step"),
    (lambda d: (d / "256" / "2" / "measurements.csv").write_text("step,x\n1,oops\n"), "line 2"),
])
def test_bad_directories_are_one_line_exit_2_and_nothing_written(data, tmp_path, capsys,
                                                                breakage, key):
    wdir = data / "fashion_mnist" / "simple_cnn" / "nesterov_momentum"
    breakage(wdir)
    db = tmp_path / "bs.db"
    code, out, err = _import(data, f"sqlite:///{db}", capsys)
    assert code == 2
    assert err.count("\n") == 1 and key in err and str(wdir) in err
    assert not db.exists()


def test_bad_target_and_empty_directory(data, tmp_path, capsys):
    db = tmp_path / "bs.db"
    code, _, err = _import(data, f"sqlite:///{db}", capsys, "--target", "val/acc>0.9")
    assert code == 2 and "'val/acc'" in err and "val/classification_error" in err
    code, _, err = _import(tmp_path / "nothing", f"sqlite:///{db}", capsys)
    assert code == 2 and "not a directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _import(tmp_path / "empty", f"sqlite:///{db}", capsys)
    assert code == 2 and "no study.json" in err
    assert not db.exists()


def _edit(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _same(a: float | None, b: float | None) -> bool:
    def norm(v):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    return norm(a) == norm(b)


def test_round_trip_is_lossless(data, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'bs.db'}"
    assert _import(data, url, capsys)[0] == 0
    out = tmp_path / "out"
    code, text, err = run_cli(["export", "batch-science", NAME, str(out), "--storage", url],
                              capsys)
    assert code == 0, err
    a = data / "fashion_mnist" / "simple_cnn" / "nesterov_momentum"
    b = out / "fashion_mnist" / "simple_cnn" / "nesterov_momentum"
    assert str(b) in text
    for sa in sorted(p for p in a.iterdir() if p.is_dir()):
        sb = b / sa.name
        assert json.loads((sa / "study.json").read_text()) == json.loads(
            (sb / "study.json").read_text())
        x, y = bs.read_study(sa), bs.read_study(sb)
        assert [t.metadata for t in x.trials] == [t.metadata for t in y.trials]
        for tx, ty in zip(x.trials, y.trials):
            assert tx.columns == ty.columns and tx.steps == ty.steps
            assert all(_same(u, v) for rx, ry in zip(tx.rows, ty.rows) for u, v in zip(rx, ry))
    # exporting again over it is refused, and importing the export gives the same curve
    code, _, err = run_cli(["export", "batch-science", NAME, str(out), "--storage", url],
                           capsys)
    assert code == 2 and "exists already" in err
    url2 = f"sqlite:///{tmp_path / 'again.db'}"
    assert _import(out, url2, capsys)[0] == 0
    goal = ["--target", "val/classification_error<0.25"]
    assert [p["best_steps"] for p in _curve(NAME, url, capsys, *goal)["points"]] == \
        [p["best_steps"] for p in _curve(NAME, url2, capsys, *goal)["points"]]


def test_our_studies_exported_and_imported_back_give_the_same_curve(tmp_path, capsys):
    spec = write(tmp_path, SMALL_NQM.replace('[pruner]\nname = "none"\nlossless = false\n',
                                            ""), "nqm_small.toml")
    url = f"sqlite:///{tmp_path / 'ours.db'}"
    code, _, err = run_cli(["run", str(spec), "--storage", url, "-q"], capsys)
    assert code == 0, err
    out = tmp_path / "out"
    code, text, err = run_cli(["export", "batch-science", str(spec), str(out), "--storage",
                               url], capsys)
    assert code == 0, err
    wdir = out / "nqm" / "nqm_small" / "momentum"
    meta = json.loads((wdir / "16" / "study.json").read_text())
    assert meta["parameter_configs"]["momentum"]["scale"] == "REVERSE_LOG_SCALE"
    assert meta["parameter_configs"]["momentum"]["min_value"] == pytest.approx(0.0)
    assert meta["early_stopping"] is True  # the lossless pruner ran
    statuses = {json.loads(p.read_text())["status"] for p in wdir.glob("*/*/metadata.json")}
    assert "COMPLETE" in statuses and statuses <= set(bs.STATUSES)
    url2 = f"sqlite:///{tmp_path / 'back.db'}"
    code, _, err = _import(wdir, url2, capsys, "--name", "back", "--target", "loss<=0.01")
    assert code == 0, err
    # ours re-scored at the evaluations (what the layout holds) equals the import's
    mine = _curve(str(spec), url, capsys, "--target", "loss<=0.01")
    back = _curve("back", url2, capsys)
    assert [p["best_steps"] for p in mine["points"]] == [p["best_steps"] for p in back["points"]]
    for p, q in zip(mine["points"], back["points"]):
        assert q["best_params"]["learning_rate"] == p["best_params"]["learning_rate"]
        assert q["best_params"]["one_minus_momentum"] == pytest.approx(
            p["best_params"]["one_minus_momentum"], rel=1e-12)
    shutil.rmtree(out)
