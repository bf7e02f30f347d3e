"""The two-batch estimator of the gradient noise scale (tuner.core.predict)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.core.predict import ema_ratio, finish, measure_steps, two_batch


def test_two_batch_estimates_are_unbiased_on_synthetic_gradients() -> None:
    """Per-example gradients G + noise (diagonal covariance, known trace): the estimates from
    |G_b|^2 and |G_B|^2 average to |G|^2 and tr(Sigma) (within 4 standard errors), while
    either norm alone is biased by tr(Sigma)/b."""
    rng = np.random.default_rng(0)
    d, big, k, reps = 50, 64, 4, 4000
    small = big // k
    g_true = rng.normal(size=d) * 0.3
    sd = rng.uniform(0.2, 2.0, size=d)  # per-example noise sd per coordinate
    grad, trace, small_only = [], [], []
    for _ in range(reps):
        per_example = g_true + rng.normal(size=(big, d)) * sd
        micro = per_example.reshape(k, small, d).mean(axis=1)  # k micro-batch gradients
        small_sq = float((micro ** 2).sum(axis=1).mean())
        big_sq = float((micro.mean(axis=0) ** 2).sum())
        g, t = two_batch(small, big, small_sq, big_sq)
        grad.append(g)
        trace.append(t)
        small_only.append(small_sq)
    true_g, true_t = float(g_true @ g_true), float((sd ** 2).sum())
    for est, truth in ((grad, true_g), (trace, true_t)):
        se = np.std(est) / math.sqrt(reps)
        assert abs(np.mean(est) - truth) < 4 * se, (np.mean(est), truth, se)
    # the naive |G_b|^2 is off by tr(Sigma)/b: the test can tell a biased estimator apart
    assert np.mean(small_only) - true_g > 0.8 * true_t / small


def test_two_batch_needs_two_batch_sizes() -> None:
    with pytest.raises(ValueError):
        two_batch(8, 8, 1.0, 1.0)


def test_ema_ratio_and_summary() -> None:
    """Without averaging each point is its own ratio; the run's B_simple is the ratio of the
    means, not the mean of the ratios; a non-positive mean |G|^2 gives no value."""
    assert ema_ratio([4.0, 9.0], [2.0, 3.0], 0.0) == [2.0, 3.0]
    averaged = ema_ratio([4.0, 9.0], [2.0, 3.0], 0.5)
    assert averaged[0] == 2.0 and averaged[1] == pytest.approx((0.5 * 4 + 9) / (0.5 * 2 + 3))
    ns = finish(8, [(0, 2.0, 4.0), (5, 3.0, 9.0)], 0.0, method="m")
    assert ns.b_simple == pytest.approx(13.0 / 5.0)
    assert [p.examples for p in ns.points] == [0, 40]
    assert finish(8, [(0, -1.0, 4.0)], 0.0, method="m").b_simple is None


def test_measure_steps_spread_from_initialisation() -> None:
    assert measure_steps(100, 4) == [0, 25, 50, 75]
    assert measure_steps(3, 20) == [0, 1, 2]
