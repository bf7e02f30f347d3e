"""Time to target from stored step times (tuner/analysis/throughput.py)."""

from __future__ import annotations

import pytest

from tuner.analysis.curves import curve
from tuner.analysis.records import TrialRecord
from tuner.analysis.throughput import device_kind, step_time


def _t(n: int, outcome: str = "reached", steps: int | None = 100, step_s: float | None = 0.01,
       device: str = "cpu", wall: float | None = 2.0, stopped: int = 100) -> TrialRecord:
    return TrialRecord(n, outcome, {}, steps_to_target=steps if outcome == "reached" else None,
                       step_seconds=step_s, device=device, wall_seconds=wall, eval_seconds=0.5,
                       stopped_at_step=stopped)


def test_device_kinds() -> None:
    assert device_kind("cuda:1") == "cuda" and device_kind("cpu") == "cpu"
    assert device_kind("cpu (closed form)") is None and device_kind(None) is None
    assert device_kind("unknown (batch_science import)") is None


def test_step_time_is_the_median_of_finished_not_diverged_trials_on_the_main_device() -> None:
    trials = [_t(0, step_s=0.01), _t(1, "missed", step_s=0.03), _t(2, "pruned", step_s=0.02),
              _t(3, "diverged", step_s=9.0), _t(4, "failed", step_s=9.0),
              _t(5, step_s=5.0, device="cuda:0")]
    st = step_time(trials)
    assert st.seconds == pytest.approx(0.02) and st.n_trials == 3
    assert st.device == "cpu" and st.how == "steady"
    assert step_time([_t(0, device="cpu (closed form)")]) is None
    old = step_time([_t(0, step_s=None, wall=2.5, stopped=100)])  # stored before step_seconds
    assert old.how == "wall" and old.seconds == pytest.approx((2.5 - 0.5) / 100)


def test_trials_trained_at_once_count_only_where_none_ran_alone() -> None:
    shared = [TrialRecord(n, "reached", {}, steps_to_target=100, step_seconds=0.05, device="cpu",
                          at_once=4) for n in range(3)]
    st = step_time([*shared, _t(9, step_s=0.01)])
    assert st.seconds == pytest.approx(0.01) and st.n_trials == 1 and st.how == "steady"
    st = step_time(shared)
    assert st.seconds == pytest.approx(0.05) and st.how == "shared"


def test_time_to_target_and_the_time_optimal_batch_size() -> None:
    # steps fall with B, but the step time rises: the time-optimal B is in the middle
    by_b = {16: [_t(0, steps=1000, step_s=0.001)], 64: [_t(0, steps=300, step_s=0.002)],
            256: [_t(0, steps=200, step_s=0.008)]}
    c = curve("x", {"metric": "error", "value": 0.1, "direction": "minimize"}, "sgd", by_b, {},
              n_boot=0)
    times = {p.batch_size: p.time_to_target for p in c.points}
    assert times == pytest.approx({16: 1.0, 64: 0.6, 256: 1.6})
    assert c.time_optimal().batch_size == 64
    assert [p.examples_per_second for p in c.points] == pytest.approx([16000, 32000, 32000])


def test_curve_shows_time_to_target_from_real_training(tmp_path, capsys) -> None:
    import json

    from conftest import SMALL_DIGITS, run_cli, write

    path = write(tmp_path, SMALL_DIGITS, "t.toml")
    url = f"sqlite:///{tmp_path / 't.db'}"
    assert run_cli(["run", str(path), "--storage", url, "-q"], capsys)[0] == 0
    code, out, err = run_cli(["curve", str(path), "--storage", url, "--format", "json",
                              "--n-boot", "0"], capsys)
    assert code == 0, err
    c = json.loads(out)
    for p in c["points"]:
        assert p["device"] == "cpu" and p["step_time_basis"] == "steady"
        assert p["step_seconds"] > 0
        assert p["examples_per_second"] == pytest.approx(p["batch_size"] / p["step_seconds"])
        if p["best_steps"]:
            assert p["time_to_target"] == pytest.approx(p["best_steps"] * p["step_seconds"])
    best = min((p for p in c["points"] if p["time_to_target"]),
               key=lambda p: p["time_to_target"])
    assert c["time_optimal"]["batch_size"] == best["batch_size"]
    code, out, _ = run_cli(["curve", str(path), "--storage", url, "--n-boot", "0"], capsys)
    assert "time_to_target_s" in out
    assert f"time-optimal batch size: B = {best['batch_size']}" in out
