"""`tuner run` end to end on real digits training and a real SQLite file, read back by Optuna."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TRIAL_ATTRS, run_cli

STUDY_ATTRS = {"spec_name", "batch_size", "workload", "optimizer", "target", "budget",
               "search_space", "sampler", "pruner", "eval_cadence", "versions", "spec_text"}


def counts(url: str) -> dict[int, int]:
    return {s.user_attrs["batch_size"]: s.n_trials for s in optuna.get_all_study_summaries(url)}


def test_run_stores_contract_and_tops_up_exactly(
    small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code, out, err = run_cli(["run", str(small_spec), "--storage", url, "--trials", "8"], capsys)
    assert code == 0, err
    assert "batch_size" in out and "best_steps" in out
    assert "B=16 trial 8/8" in err  # progress lines

    summaries = optuna.get_all_study_summaries(url)
    assert sorted(s.user_attrs["batch_size"] for s in summaries) == [16, 128]
    for summary in summaries:
        attrs = summary.user_attrs
        assert STUDY_ATTRS <= set(attrs)
        assert attrs["spec_name"] == "small_digits"
        assert attrs["target"] == {"metric": "error", "value": 0.12, "direction": "minimize"}
        assert attrs["budget"]["max_steps"] == 400
        assert attrs["search_space"]["learning_rate"] == {"low": 0.01, "high": 1.0, "log": True}
        assert {"project", "torch", "lightning", "optuna"} <= set(attrs["versions"])
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        trials = study.get_trials()
        assert len(trials) == 8
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        reached = 0
        for t in trials:
            assert TRIAL_ATTRS <= set(t.user_attrs), t.user_attrs
            a = t.user_attrs
            assert a["examples_seen"] == a["stopped_at_step"] * attrs["batch_size"]
            assert 0 <= a["eval_seconds"] < a["wall_seconds"]
            assert a["eval_share"] == pytest.approx(a["eval_seconds"] / a["wall_seconds"])
            # steady-state seconds per step: after the warm-up steps, evaluation excluded
            if a["stopped_at_step"] > 5 and not a["diverged"]:
                assert 0 < a["step_seconds"] <= (a["wall_seconds"] - a["eval_seconds"]) / (
                    a["stopped_at_step"] - 5)
            if t.state == TrialState.COMPLETE and a["reached"]:
                reached += 1
                assert t.value == a["steps_to_target"] == a["stopped_at_step"]
                assert t.constraints == {"reached": 0.0}
                # intermediate values at global steps, ending at steps-to-target
                assert max(t.intermediate_values) == a["steps_to_target"]
                assert t.intermediate_values[a["steps_to_target"]] <= 0.12
            elif t.state == TrialState.COMPLETE:  # missed or diverged: budget + infeasible
                assert t.value == 400 and t.constraints == {"reached": 1.0}
                assert a["steps_to_target"] is None
            else:
                assert t.state == TrialState.PRUNED and not a["reached"]
        assert reached >= 1
        assert study.best_trial.user_attrs["reached"]

    # Same command again: nothing added.
    code, _, err = run_cli(["run", str(small_spec), "--storage", url, "--trials", "8"], capsys)
    assert code == 0 and counts(url) == {16: 8, 128: 8}
    assert "nothing to run" in err
    # More trials: exactly the difference, per batch size.
    code, _, _ = run_cli(["run", str(small_spec), "--storage", url, "--trials", "12"], capsys)
    assert code == 0 and counts(url) == {16: 12, 128: 12}
    # One batch size only.
    code, _, _ = run_cli(["run", str(small_spec), "--storage", url, "-n", "13", "-b", "128"],
                         capsys)
    assert code == 0 and counts(url) == {16: 12, 128: 13}


def test_quasi_random_points_are_shared_across_batch_sizes(
    small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert run_cli(["run", str(small_spec), "--storage", url, "-n", "3", "-q"], capsys)[0] == 0
    studies = [optuna.load_study(study_name=s.study_name, storage=url)
               for s in optuna.get_all_study_summaries(url)]
    params = [[t.params for t in s.get_trials()] for s in studies]
    assert params[0] == params[1]
    assert len({p["learning_rate"] for p in params[0]}) == 3  # distinct Halton points


def test_changed_spec_refuses_to_resume_and_writes_nothing(
    small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert run_cli(["run", str(small_spec), "--storage", url, "-n", "1", "-q"], capsys)[0] == 0
    small_spec.write_text(small_spec.read_text().replace("high = 1.0", "high = 3.0"))
    code, out, err = run_cli(["run", str(small_spec), "--storage", url, "-n", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "search_space" in err and "differs from the stored study" in err
    assert counts(url) == {16: 1, 128: 1}


@pytest.mark.parametrize("args, fragment", [
    (["--batch-size", "64"], "--batch-size 64: not in"),
    (["--storage", "not a url"], "is not a SQLAlchemy URL"),
    (["--storage", "sqlite:////no/such/folder/x.db"], "does not exist"),
    (["--trials", "0"], "--trials"),
])
def test_bad_options_exit_2_one_line(small_spec: Path, capsys: pytest.CaptureFixture[str],
                                     args: list[str], fragment: str) -> None:
    code, out, err = run_cli(["run", str(small_spec), *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_seed_override_makes_separate_studies(
    small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    for seed in ("0", "1"):
        assert run_cli(["run", str(small_spec), "--storage", url, "-n", "1", "-q", "-b", "16",
                        "--seed", seed], capsys)[0] == 0
    seeds = sorted(s.user_attrs["seed"] for s in optuna.get_all_study_summaries(url))
    assert seeds == [0, 1]


def test_help_is_accurate(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["run", "--help"], capsys)
    assert code == 0
    for option in ("--batch-size", "--trials", "--storage", "--seed"):
        assert option in out


def test_failed_trial_is_rerun_with_its_params_and_seed(
    small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    assert run_cli(["run", str(small_spec), "--storage", url, "-n", "1", "-q", "-b", "128"],
                   capsys)[0] == 0
    [summary] = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    # A trial that failed mid-run (as Ctrl-C or an exception leaves it).
    failed = study.ask({"learning_rate": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
                        "one_minus_momentum": optuna.distributions.FloatDistribution(0.01, 0.5,
                                                                                     log=True)})
    study.tell(failed, state=TrialState.FAIL)
    code, _, err = run_cli(["run", str(small_spec), "--storage", url, "-n", "2", "-b", "128"],
                           capsys)
    assert code == 0 and "re-queued 1 failed trial" in err
    trials = study.get_trials()
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.params == failed.params and retry.state != TrialState.FAIL
    from tuner.run.objective import trial_seed
    assert retry.user_attrs["seed"] == trial_seed(0, 128, failed.number)
    assert counts(url) == {128: 3}  # 2 finished + the failed one, which does not count


def test_diverged_trials_stay_visible_and_are_never_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import SMALL_DIGITS, write

    spec = write(tmp_path, SMALL_DIGITS.replace("low = 0.01, high = 1.0", "low = 1e6, high = 1e8"),
                 "hot.toml")
    url = f"sqlite:///{tmp_path / 'd.db'}"
    code, out, _ = run_cli(["run", str(spec), "--storage", url, "-n", "3", "-b", "16", "-q"],
                           capsys)
    assert code == 0
    [s] = optuna.get_all_study_summaries(url)
    trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
    for t in trials:
        assert t.state == TrialState.COMPLETE and t.user_attrs["diverged"]
        assert t.value == 400 and t.constraints == {"reached": 1.0}
        assert t.user_attrs["stopped_at_step"] < 400
    row = [line for line in out.splitlines() if line.strip().startswith("16 ")][0].split()
    assert row[1] == "-" and row[7] == "3"  # no best steps; 3 diverged


def test_optuna_pruner_by_name_runs_and_records_stop_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import SMALL_DIGITS, write

    text = SMALL_DIGITS.replace("value = 0.12", "value = 0.03") + (
        '[pruner]\nname = "median"\nlossless = false\n'
        'options = { n_startup_trials = 2, n_warmup_steps = 20 }\n')
    spec = write(tmp_path, text, "median.toml")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    code, _, err = run_cli(["run", str(spec), "--storage", url, "-n", "8", "-b", "16", "-q"],
                           capsys)
    assert code == 0, err
    [s] = optuna.get_all_study_summaries(url)
    assert s.user_attrs["pruner"]["name"] == "median"
    trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [t.user_attrs["outcome"] for t in trials]
    for t in pruned:
        assert t.user_attrs["stopped_at_step"] == t.last_step < 400
        # no value: Optuna would store the last error, which the dashboard draws as steps
        assert t.value is None


def test_a_study_made_by_another_program_is_refused(
    small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    other = optuna.create_study(storage=url, study_name="small_digits.B16.seed0")
    other.optimize(lambda t: t.suggest_float("learning_rate", 0.01, 1.0), n_trials=2)
    before = (tmp_path / "foreign.db").read_bytes()
    code, out, err = run_cli(["run", str(small_spec), "--storage", url, "-n", "1"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "'small_digits.B16.seed0' was not made by `tuner run`" in err and "2 trial(s)" in err
    assert (tmp_path / "foreign.db").read_bytes() == before  # not even switched to WAL


def test_a_half_created_study_is_completed(
    small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a worker killed while writing the study's attrs (spec_name is written first)
    url = f"sqlite:///{tmp_path / 'half.db'}"
    half = optuna.create_study(storage=url, study_name="small_digits.B128.seed0")
    half.set_user_attr("spec_name", "small_digits")
    code, _, err = run_cli(["run", str(small_spec), "--storage", url, "-n", "1", "-b", "128",
                            "-q"], capsys)
    assert code == 0, err
    [s] = optuna.get_all_study_summaries(url)
    assert STUDY_ATTRS <= set(s.user_attrs) and s.user_attrs["batch_size"] == 128
    assert s.n_trials == 1
