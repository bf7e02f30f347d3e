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
