"""``tuner noise-scale`` on a trained workload (digits, the tensor path); a LightningModule's is
in tests/workload/test_lightning.py, the NQM's in tests/workloads/test_nqm_noise.py."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from conftest import run_cli


def stored_runs(url: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=url).user_attrs.get("noise_scale", [])


def test_digits_noise_scale_at_the_best_trial_is_stored_then_bad_input_writes_nothing(
        small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    assert run_cli(["run", str(small_spec), "--storage", url, "-q"], capsys)[0] == 0
    code, out, err = run_cli(["noise-scale", str(small_spec), "-b", "128", "--storage", url,
                              "--points", "6", "-k", "4"], capsys)
    assert code == 0, err
    assert "B_simple = " in out and "micro-batches of 32" in out
    assert "stored in study small_digits.B128.seed0" in err
    (run,) = stored_runs(url, "small_digits.B128.seed0")
    best = optuna.load_study(study_name="small_digits.B128.seed0", storage=url).best_trial
    assert run["params"] == {**best.params, "weight_decay": run["params"]["weight_decay"]}
    assert run["steps"] == best.user_attrs["steps_to_target"]
    assert [p["step"] for p in run["points"]] == [
        (i * run["steps"]) // min(6, run["steps"]) for i in range(min(6, run["steps"]))]
    assert run["b_simple"] is not None and run["b_simple"] > 0
    assert all(p["trace_sigma"] > 0 for p in run["points"])

    bad = [
        (["-b", "64"], "no stored study of this spec at that batch size; give every searched "
                       "metaparameter with --set (missing: learning_rate, one_minus_momentum)"),
        (["-b", "128", "--set", "lr=0.1"], "--set lr: not a metaparameter"),
        (["-b", "128", "--set", "learning_rate"], "expected NAME=VALUE"),
        (["-b", "128", "-k", "3"], "--micro-batches 3: must divide the batch size 128"),
    ]
    for args, message in bad:
        code, out, err = run_cli(["noise-scale", str(small_spec), "--storage", url, *args],
                                 capsys)
        assert code == 2 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    assert len(stored_runs(url, "small_digits.B128.seed0")) == 1  # nothing written
    assert stored_runs(url, "small_digits.B16.seed0") == []

    # --set at a batch size without a study: measured, not stored
    code, out, err = run_cli(["noise-scale", str(small_spec), "-b", "64", "--storage", url,
                              "--set", "learning_rate=0.1", "--set", "one_minus_momentum=0.1",
                              "--steps", "30", "--points", "3", "--format", "json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["stored_in"] is None and got["params_from"] == "--set"
    assert got["steps"] == 30 and [p["step"] for p in got["points"]] == [0, 10, 20]
