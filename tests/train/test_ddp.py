"""DDP inside one trial: 2 CPU processes (gloo), one stored trial, the single-process answer."""

from __future__ import annotations

import json
from pathlib import Path

import tomllib

import optuna
import pytest
from optuna.trial import TrialState

from conftest import SMALL_DIGITS, run_cli, write

DDP = SMALL_DIGITS + '\n[trainer]\naccelerator = "cpu"\ndevices = 2\n'


def only_trial(url: str) -> optuna.trial.FrozenTrial:
    [s] = optuna.get_all_study_summaries(url)
    [t] = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
    return t


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    single = write(tmp_path, SMALL_DIGITS.replace("value = 0.12", "value = 0.08"), "one.toml")
    ddp = write(tmp_path, DDP.replace("value = 0.12", "value = 0.08"), "two.toml")
    urls = [f"sqlite:///{tmp_path / n}" for n in ("one.db", "two.db")]
    for spec, url in zip((single, ddp), urls):
        code, _, err = run_cli(["run", str(spec), "--storage", url, "-n", "1", "-b", "16", "-q"],
                               capsys)
        assert code == 0, err
    one, two = only_trial(urls[0]), only_trial(urls[1])  # one trial stored, not one per rank
    assert two.state == TrialState.COMPLETE and two.user_attrs["devices"] == 2
    assert one.params == two.params and one.user_attrs["seed"] == two.user_attrs["seed"]
    # the same global batches and averaged gradients: the same steps-to-target, and learning
    # curves equal to float noise at every evaluation
    assert one.user_attrs["reached"] and two.user_attrs["reached"]
    assert one.user_attrs["steps_to_target"] == two.user_attrs["steps_to_target"]
    assert one.intermediate_values.keys() == two.intermediate_values.keys()
    for step, v in one.intermediate_values.items():
        assert two.intermediate_values[step] == pytest.approx(v, abs=1.5 / 360)  # <= 1 example


def test_devices_must_split_every_batch_size(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, DDP.replace("devices = 2", "devices = 3"), "three.toml")
    code, _, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{tmp_path / 'x.db'}"],
                           capsys)
    assert code == 2 and "batch_sizes: 16 does not split over trainer.devices = 3" in err
    assert not (tmp_path / "x.db").exists()


@pytest.mark.slow
def test_an_error_in_report_stops_every_rank_and_is_raised() -> None:
    """Reporting runs in the process that holds the trial; if it raises (a storage error, say),
    rank 0 must not wait forever for the answer, and the error reaches the objective."""
    from tuner.run import specs as spec_mod
    from tuner.train.trial import train
    from tuner.workload import TrialRequest

    spec = spec_mod.parse(tomllib.loads(DDP), "ddp.toml")
    req = TrialRequest(
        params={"learning_rate": 0.1, "one_minus_momentum": 0.1, "weight_decay": 0.0},
        optimizer=spec.optimizer, schedule=spec.schedule, batch_size=16,
        max_steps=spec.max_steps(16), eval_steps=spec.eval_steps(16), target=spec.target, seed=0,
        accelerator="cpu", devices=2)
    calls = []

    def report(step: int, metrics: dict[str, float]) -> bool:
        calls.append(step)
        raise RuntimeError("storage went away")

    with pytest.raises(RuntimeError, match="storage went away"):
        train(spec.workload, req, report)
    assert calls == [req.eval_steps[0]]


def test_noise_scale_under_ddp_equals_micro_batches_on_one_device(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two gloo ranks, each its half of every batch: the per-rank and all-reduced gradients
    give the same estimates as one device splitting each batch into the same two halves (the
    same data, initialisation and updates), and a -k other than the ranks is refused, as are
    branches (local-cbs) under DDP."""
    one = write(tmp_path, SMALL_DIGITS, "one.toml")
    two = write(tmp_path, DDP, "two.toml")
    args = ["-b", "32", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--steps", "30",
            "--points", "3", "--set", "learning_rate=0.1", "--set", "one_minus_momentum=0.1",
            "--format", "json", "--no-store"]
    code, out, err = run_cli(["noise-scale", str(two), *args], capsys)
    assert code == 0, err
    ddp = json.loads(out)
    code, out, err = run_cli(["noise-scale", str(one), *args, "-k", "2"], capsys)
    assert code == 0, err
    single = json.loads(out)
    assert "under DDP" in ddp["method"] and "2 ranks" in ddp["method"]
    assert ddp["small_batch"] == single["small_batch"] == 16
    assert [p["step"] for p in ddp["points"]] == [p["step"] for p in single["points"]]
    for a, b in zip(ddp["points"], single["points"]):
        assert a["grad_norm_sq"] == pytest.approx(b["grad_norm_sq"], rel=1e-3, abs=1e-6)
        assert a["trace_sigma"] == pytest.approx(b["trace_sigma"], rel=1e-3)
    code, out, err = run_cli(["noise-scale", str(two), *args, "-k", "4"], capsys)
    assert code == 2 and "allowed: 2 (trainer.devices)" in err
    code, out, err = run_cli(["local-cbs", str(two), *args, "--factors", "2"], capsys)
    assert code == 2 and "branches run on one device" in err
