"""Solution quality within a budget (tuner/analysis/quality.py, `tuner curve --quality`) and
`[budget] train_to_budget`, on real digits training."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from conftest import SMALL_DIGITS, SMALL_NQM, run_cli, write
from tuner import spec as spec_mod
from tuner.analysis.quality import best_within
from tuner.core.errors import SpecError

TO_BUDGET = SMALL_DIGITS.replace("max_steps = 400", "max_steps = 200\ntrain_to_budget = true")


def test_best_within_a_cap() -> None:
    curve = {"steps": [5, 10, 20, 40], "metrics": {"error": [0.5, 0.2, None, 0.1]}}
    assert best_within(curve, "error", "minimize", 30) == (0.2, 10)
    assert best_within(curve, "error", "minimize", 40) == (0.1, 40)
    assert best_within(curve, "error", "maximize", 40) == (0.5, 5)
    assert best_within(curve, "error", "minimize", 4) is None
    assert best_within(curve, "loss", "minimize", 40) is None


def test_train_to_budget_is_checked_and_keeps_old_fingerprints(tmp_path: Path) -> None:
    s = spec_mod.load(write(tmp_path, TO_BUDGET))
    assert s.budget.train_to_budget and s.pruner.name == "none" and not s.pruner.lossless
    plain = spec_mod.load(write(tmp_path, SMALL_DIGITS, "plain.toml"))
    assert "train_to_budget" not in plain.identity()["budget"]  # stored studies keep theirs
    assert s.identity()["budget"]["train_to_budget"] is True
    bad = TO_BUDGET + '\n[pruner]\nname = "lossless"\n'
    with pytest.raises(SpecError, match="pruner.name: 'lossless' with .budget. train_to_budget"):
        spec_mod.load(write(tmp_path, bad, "bad.toml"))
    from tuner.run import specs as run_specs

    nqm = SMALL_NQM.replace("max_steps = 100_000_000", "max_steps = 1000\ntrain_to_budget = true")
    with pytest.raises(SpecError, match="budget.train_to_budget: workload 'nqm' is not trained"):
        run_specs.load(write(tmp_path, nqm, "nqm.toml"))


def test_trials_train_their_whole_budget_and_quality_is_exact(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, TO_BUDGET, "tb.toml")
    url = f"sqlite:///{tmp_path / 'q.db'}"
    code, _, err = run_cli(["run", str(path), "--storage", url, "-q"], capsys)
    assert code == 0, err
    n_reached = 0
    for s in optuna.get_all_study_summaries(url):
        assert s.user_attrs["data"]["n_train"] > 0
        for t in optuna.load_study(study_name=s.study_name, storage=url).trials:
            a = t.user_attrs
            if a["diverged"]:
                continue
            assert a["stopped_at_step"] == 200  # past the target, to the budget
            assert a["curve"]["steps"][-1] == 200
            if a["reached"]:
                n_reached += 1
                assert a["steps_to_target"] < 200 and t.value == a["steps_to_target"]
    assert n_reached > 0
    code, out, err = run_cli(["curve", str(path), "--storage", url, "--quality",
                              "--format", "json"], capsys)
    assert code == 0, err
    q = {p["batch_size"]: p for p in json.loads(out)["points"]}
    assert all(p["bound"] == "exact" and p["cap"] == 200 for p in q.values())
    # one epoch: n_train / B steps at B, fewer evaluations, a worse (or equal) best
    code, out, err = run_cli(["curve", str(path), "--storage", url, "--quality",
                              "--max-epochs", "1", "--format", "json", "--plot",
                              str(tmp_path / "q.png")], capsys)
    assert code == 0, err
    e1 = json.loads(out)
    n_train = optuna.get_all_study_summaries(url)[0].user_attrs["data"]["n_train"]
    for p in e1["points"]:
        assert p["cap"] == n_train // p["batch_size"]
        if p["best_value"] is not None:
            assert p["best_value"] >= q[p["batch_size"]]["best_value"]
    assert e1["budget"] == "1 epochs" and (tmp_path / "q.png").exists()
    # the steps-to-target curve is unchanged by training on: the same target, same steps
    code, out, err = run_cli(["curve", str(path), "--storage", url, "--format", "json",
                              "--n-boot", "0", "--target", "error<=0.12"], capsys)
    assert code == 0, err
    assert all(p["best_bound"] == "exact" for p in json.loads(out)["points"])
    code, _, err = run_cli(["report", str(path), "--storage", url, "--out",
                            str(tmp_path / "rep"), "--n-boot", "20", "--no-dashboard"], capsys)
    assert code == 0, err
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Solution quality: tb" in page and "200 steps" in page


def test_quality_of_trials_that_stopped_at_the_target_is_a_bound(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, SMALL_DIGITS, "plain.toml")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert run_cli(["run", str(path), "--storage", url, "-q"], capsys)[0] == 0
    code, out, err = run_cli(["curve", str(path), "--storage", url, "--quality"], capsys)
    assert code == 0, err
    assert "bound" in out and "at least this good" in out
    code, _, err = run_cli(["curve", str(path), "--storage", url, "--max-epochs", "1"], capsys)
    assert code == 2 and "--max-epochs: only with --quality" in err
    code, _, err = run_cli(["curve", str(path), "--storage", url, "--quality", "--max-steps",
                            "10", "--max-epochs", "1"], capsys)
    assert code == 2 and "at most one budget" in err
    code, _, err = run_cli(["curve", str(path), "--storage", url, "--quality", "--target",
                            "nope<=1"], capsys)
    assert code == 2 and "'nope'" in err
