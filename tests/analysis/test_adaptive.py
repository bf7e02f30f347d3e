"""The adaptive measurement's rules (tuner.analysis.adaptive), on plain records and fits."""

from __future__ import annotations

import numpy as np

import math

import pytest

from tuner.analysis.adaptive import (Plan, Progress, Step, around, first_batch_sizes, knee,
                                     log2_spread, next_batch_size, stop_reason, study_stop,
                                     trained_examples, warm_start)
from tuner.analysis.adequacy import assess
from tuner.analysis.fit import Fit, fit_with_bootstrap
from tuner.analysis.records import TrialRecord
from tuner.core.space import Param

GRID = [4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576]


def test_first_batch_sizes_are_log_spaced_with_both_ends() -> None:
    assert first_batch_sizes(GRID, 4) == [4, 256, 16384, 1048576]
    assert first_batch_sizes([8, 16, 32, 64, 128, 256, 512, 1024], 4) == [8, 32, 256, 1024]  # log2 3, 5.3, 7.7, 10
    assert first_batch_sizes([1024, 8, 64], 3) == [8, 64, 1024]
    assert first_batch_sizes([8, 64], 4) == [8, 64]


def _trials(steps: list[int | None]) -> list[TrialRecord]:
    return [TrialRecord(i, "reached" if s else "missed", {"learning_rate": 0.1}, s,
                        stopped_at_step=s or 1000) for i, s in enumerate(steps)]


def test_a_study_stops_when_adequate_on_a_plateau_or_at_the_cap() -> None:
    plan = Plan(patience=2, plateau=0.05)
    tight = _trials([100, 101, 102, 103, 104, 105, 106, 107])
    assert study_stop(plan, assess(64, tight), [], 8, 100) == "adequate"
    sharp = _trials([100] + [None] * 15)  # one reached trial: never adequate
    a = assess(64, sharp)
    assert study_stop(plan, a, [], 16, 100) is None
    assert study_stop(plan, a, [None], 16, 100) is None  # one earlier round: too soon
    assert study_stop(plan, a, [120, 200], 24, 100) is None  # 2 rounds ago 120: 20 % better now
    assert "plateau" in study_stop(plan, a, [104, 200], 24, 100)  # 4 % < 5 %
    assert "cap of 16" in study_stop(plan, a, [], 16, 16)


def _curve_trials(b_crit: float, s_min: float, grid: list[int]) -> dict[int, list[TrialRecord]]:
    """Trials whose best steps lie on S = s_min (1 + b_crit / B), with a spread of worse ones."""
    out = {}
    for b in grid:
        s = s_min * (1 + b_crit / b)
        out[b] = _trials([round(s * f) for f in (1.0, 1.05, 1.1, 1.3, 1.6, 2.0)] + [None, None])
    return out


def test_next_batch_size_is_in_the_knee_where_the_resamples_disagree_most() -> None:
    measured = [4, 256, 16384, 1048576]
    f = fit_with_bootstrap(_curve_trials(1000.0, 5000.0, measured))
    assert f is not None and len(f.samples) == f.n_boot > 0
    lo, hi = knee(f)
    assert lo <= 250 and hi >= 4000
    b, why = next_batch_size(f, measured, GRID)
    assert lo <= b <= hi and b not in measured and "knee" in why
    left = [x for x in GRID if x not in measured and lo <= x <= hi]
    assert log2_spread(f, b) == max(log2_spread(f, x) for x in left)
    # the knee measured: the largest disagreement anywhere
    b2, why2 = next_batch_size(f, measured + left, GRID)
    assert "none left in the knee" in why2 and b2 not in measured + left
    assert next_batch_size(f, GRID, GRID) is None
    # no fit: the batch size farthest from the measured ones
    assert next_batch_size(None, [4, 1048576], GRID)[0] in (1024, 4096)


def test_stop_reasons() -> None:
    f = Fit(5000.0, 1000.0, ci95={"b_crit": (900.0, 1200.0)}, samples=np.ones((1, 2)))
    plan = Plan(first=4, width=1.5, predict_within=0.25, confirm=2, max_examples=1e9)
    p = Progress([Step(b, "first") for b in (4, 256, 16384, 1048576)], examples=1e6)
    assert stop_reason(plan, f, p, GRID) is None  # nothing predicted yet
    p.steps.append(Step(1024, "knee", predicted=10_000, measured=9_000))  # 11 % off
    assert "spans 1.33x" in stop_reason(plan, f, p, GRID)
    wide = Fit(5000.0, 1000.0, ci95={"b_crit": (300.0, 3000.0)})
    assert stop_reason(plan, wide, p, GRID) is None  # one prediction, a wide interval
    p.steps.append(Step(4096, "knee", predicted=6_000, measured=7_000))  # 14 % off
    assert "last 2 batch sizes added (B = 1024, 4096)" in stop_reason(plan, wide, p, GRID)
    p.steps.append(Step(64, "knee", predicted=60_000, measured=90_000))  # 33 % off
    assert stop_reason(plan, wide, p, GRID) is None
    p.examples = 2e9
    assert "budget is spent" in stop_reason(plan, wide, p, GRID)
    p.examples = 0
    p.steps += [Step(b, "rest") for b in GRID if b not in p.measured]
    assert "every batch size" in stop_reason(plan, wide, p, GRID)


def test_trained_examples_count_every_finished_trial_at_its_stopping_step() -> None:
    trials = _trials([100, None]) + [TrialRecord(9, "pruned", {}, None, stopped_at_step=40),
                                      TrialRecord(10, "running", {}, None, stopped_at_step=7)]
    assert trained_examples(32, trials) == 32 * (100 + 1000 + 40)


def test_plateau_zero_never_stops_a_study_and_a_spent_budget_does() -> None:
    sharp = _trials([100] + [None] * 15)
    a = assess(64, sharp)
    assert study_stop(Plan(plateau=0.0), a, [100, 100], 24, 100) is None  # 0 % < 0 %: no
    assert "plateau" in study_stop(Plan(plateau=0.05), a, [100, 100], 24, 100)
    assert study_stop(Plan(plateau=0.0), a, [100, 100], 24, 100, budget_left=1.0) is None
    assert study_stop(Plan(plateau=0.0), a, [100, 100], 24, 100, budget_left=0.0) == \
        "the budget is spent"


SPACE = {"learning_rate": Param("learning_rate", 1e-4, 10.0, log=True),
         "dropout": Param("dropout", 0.0, 0.5),
         "width": Param("width", 16, 512, log=True, integer=True),
         "act": Param("act", choices=("relu", "gelu"))}


def test_warm_start_interpolates_each_parameter_in_log_b_on_its_own_scale() -> None:
    bests = {64: {"learning_rate": 0.01, "dropout": 0.1, "width": 64, "act": "relu"},
             1024: {"learning_rate": 1.0, "dropout": 0.3, "width": 256, "act": "gelu"}}
    point, why = warm_start(bests, 256, SPACE)  # log B: 1/2 of the way from 64 to 1024
    assert point["learning_rate"] == pytest.approx(0.1)  # geometric: a log parameter
    assert point["dropout"] == pytest.approx(0.2)  # arithmetic: a linear one
    assert point["width"] == 128 and isinstance(point["width"], int)
    assert point["act"] == "relu"  # a categorical one: the nearer's (a tie goes below)
    assert "B = 64" in why and "B = 1024" in why and "interpolated" in why
    point, _ = warm_start(bests, 512, SPACE)  # 3/4 of the way
    assert point["learning_rate"] == pytest.approx(10 ** -0.5)
    assert point["act"] == "gelu"
    # outside the measured range: the nearest one's best as it is; a measured one: its own
    assert warm_start(bests, 8, SPACE)[0] == bests[64]
    assert warm_start(bests, 4096, SPACE)[0] == bests[1024]
    assert "nearest" in warm_start(bests, 4096, SPACE)[1]
    assert warm_start({}, 256, SPACE) is None
    # kept inside the range (an interpolation cannot leave it, a rounded integer stays in it)
    far = {64: {**bests[64], "width": 16}, 1024: {**bests[1024], "width": 17}}
    assert 16 <= warm_start(far, 256, SPACE)[0]["width"] <= 17


def test_around_moves_each_numeric_parameter_alone_inside_its_range() -> None:
    centre = {"learning_rate": 1.0, "dropout": 0.45, "width": 512, "act": "relu"}
    pts = around(centre, SPACE, 1.0)
    assert pts == [{**centre, "learning_rate": 0.5}, {**centre, "learning_rate": 2.0},
                   {**centre, "dropout": 0.45 - 0.5 / 8},
                   {**centre, "dropout": 0.5},  # 0.5125 kept inside the range
                   {**centre, "width": 256}]  # 1024 is outside: 512 again, which is the centre
    half = around(centre, SPACE, 0.5, tried=[{**centre, "learning_rate": 2 ** -0.5}])
    # x 2^-0.5 was tried: x 2^0.5 comes first
    assert half[0] == {**centre, "learning_rate": pytest.approx(math.sqrt(2))}
    assert all(p["act"] == "relu" for p in pts + half)  # categorical ones stay
    assert around({"act": "gelu"}, SPACE) == []
