"""Zhang et al.'s 20 %-overhead critical batch size and the three definitions side by side."""

from __future__ import annotations

import math

import pytest

from tuner.analysis.cbs import definitions, noise_runs, overhead_cbs
from tuner.analysis.fit import fit_with_bootstrap
from tuner.analysis.records import TrialRecord

BS = [8, 16, 32, 64, 128, 256, 512, 1024]


def mccandlish(b: float, s_min: float = 1000.0, b_crit: float = 100.0) -> float:
    return s_min * (1 + b_crit / b)


def test_overhead_cbs_interpolates_the_first_crossing() -> None:
    """On S = S_min (1 + B_c/B), S(B) B / (S(8) 8) = (B + B_c) / (8 + B_c) reaches 1.2 at
    B = 1.2 * 8 + 0.2 * B_c = 29.6; measured at powers of two, the crossing lies between 16 and
    32 and is interpolated linearly in (log B, log ratio)."""
    steps = [mccandlish(b) for b in BS]
    value, how = overhead_cbs(BS, steps)
    r16, r32 = (16 + 100) / 108, (32 + 100) / 108
    frac = (math.log(1.2) - math.log(r16)) / (math.log(r32) - math.log(r16))
    assert how == "interpolated"
    assert value == pytest.approx(math.exp(math.log(16) + frac * math.log(2)), rel=1e-12)
    assert value == pytest.approx(29.6, rel=0.03)  # the continuous curve's answer


def test_overhead_cbs_beyond_and_too_few() -> None:
    assert overhead_cbs(BS, [8000.0 / b for b in BS]) == (None, "beyond")  # perfect scaling
    assert overhead_cbs([8], [100.0]) == (None, "too few")
    # unsorted input and a missing point: the same answer as sorted
    steps = {b: mccandlish(b) for b in BS}
    assert overhead_cbs(BS[::-1], [steps[b] for b in BS[::-1]]) == overhead_cbs(
        BS, [steps[b] for b in BS])


def trials(steps: list[float]) -> list[TrialRecord]:
    return [TrialRecord(number=i, outcome="reached", params={}, steps_to_target=round(s))
            for i, s in enumerate(steps)]


def test_definitions_side_by_side_with_bootstrap_interval_and_noise_runs() -> None:
    """Eight trials per batch size scattered above the curve: the interval holds the estimate;
    the newest stored noise-scale run of each batch size is shown."""
    spread = [1.0, 1.1, 1.3, 1.05, 1.6, 1.2, 2.0, 1.15]
    by_b = {b: trials([mccandlish(b) * f for f in spread]) for b in BS}
    f = fit_with_bootstrap(by_b, n_boot=200, seed=0)
    best = {b: round(mccandlish(b)) for b in BS}
    runs = noise_runs({64: {"noise_scale": [{"b_simple": 10.0, "steps": 5},
                                            {"b_simple": 42.0, "steps": 50, "method": "m",
                                             "params_from": "p"}]}, 128: {}})
    d = definitions(f, by_b, best, runs, n_boot=200, seed=0)
    assert d.b_crit == pytest.approx(100.0, rel=0.01)
    assert d.b_overhead == pytest.approx(overhead_cbs(BS, [best[b] for b in BS])[0])
    lo, hi = d.b_overhead_ci95
    assert lo <= d.b_overhead <= hi
    assert [(n.batch_size, n.b_simple, n.runs) for n in d.noise] == [(64, 42.0, 2)]
    line = d.line()
    assert "B_crit (McCandlish fit) = 99.98" in line and "B_simple (noise scale) = 42" in line
    assert d.to_json()["b_overhead"]["reference_batch_size"] == 8
