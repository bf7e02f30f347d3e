"""Evaluation cadence: bounded relative resolution, shared steps, the budget always evaluated."""

from __future__ import annotations

import pytest

from tuner.spec.cadence import EVAL_COST, eval_steps, resolution, share_interval


@pytest.mark.parametrize("max_steps", [10, 137, 100_000])
def test_steps_grow_by_relative_with_floor_and_end_at_budget(max_steps: int) -> None:
    steps = eval_steps(max_steps, first_step=10, relative=0.02, min_interval=5)
    assert steps[0] == 10 and steps[-1] == max_steps
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert all(g > 0 for g in gaps)
    # every gap but the last (cut by the budget) is max(floor, 2 % rounded up)
    for a, g in zip(steps, gaps[:-1]):
        assert g == max(5, -(-2 * a // 100))


def test_relative_resolution_is_bounded() -> None:
    steps = eval_steps(100_000, first_step=1, relative=0.02, min_interval=1)
    for s in steps[1:]:
        before = resolution(steps, s)
        assert s - before <= max(1, 0.02 * before + 1)  # 2 %, rounded up to a whole step
        if s >= 1000:
            assert (s - before) / s <= 0.021
    assert len(steps) < 700  # ~ln(1e5)/ln(1.02), not 1e5


def test_budget_before_first_evaluation_has_no_steps() -> None:
    assert eval_steps(5, first_step=10, relative=0.02, min_interval=1) == ()


def test_resolution_is_previous_evaluation() -> None:
    steps = (10, 20, 35)
    assert resolution(steps, 10) == 0 and resolution(steps, 35) == 20


@pytest.mark.parametrize(("val", "batch", "share"), [(10_000, 32, 0.05), (359, 16, 0.1),
                                                      (10_000, 4096, 0.05), (100, 1024, 0.5)])
def test_share_interval_is_the_fewest_steps_that_keep_the_share(val: int, batch: int,
                                                                share: float) -> None:
    n = share_interval(val, batch, share)
    eval_cost = EVAL_COST * val / batch  # in training steps

    def share_at(steps: int) -> float:
        return eval_cost / (eval_cost + steps)

    assert share_at(n) <= share + 1e-12
    assert n == 1 or share_at(n - 1) > share
