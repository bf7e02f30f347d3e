"""The McCandlish fit recovers known curves; the bootstrap interval covers the truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.analysis.fit import fit, fit_with_bootstrap, regime, sample_bests
from tuner.analysis.records import TrialRecord

S_MIN, B_NOISE = 120.0, 900.0
BATCHES = [2 ** k for k in range(3, 16)]


def truth(b: float) -> float:
    return S_MIN * (1 + B_NOISE / b)


def test_exact_points_are_recovered() -> None:
    f = fit(BATCHES, [truth(b) for b in BATCHES])
    assert f.s_min == pytest.approx(S_MIN, rel=1e-6)
    assert f.b_noise == pytest.approx(B_NOISE, rel=1e-6)
    assert f.e_min == pytest.approx(S_MIN * B_NOISE, rel=1e-6) and f.b_crit == f.b_noise
    assert max(abs(r) for r in f.residuals.values()) < 1e-6


def synthetic_trials(seed: int, n: int = 30, sigma: float = 0.3) -> dict[int, list[TrialRecord]]:
    """Trials whose steps are the curve times lognormal excess (the best is near the curve)."""
    rng = np.random.default_rng(seed)
    out = {}
    for b in BATCHES:
        steps = np.ceil(truth(b) * np.exp(np.abs(rng.normal(0, sigma, n)))).astype(int)
        out[b] = [TrialRecord(i, "reached", {}, int(s)) for i, s in enumerate(steps)]
        out[b].append(TrialRecord(n, "diverged", {}))
    return out


def test_noisy_trials_recover_within_5_percent_and_interval_covers_truth() -> None:
    f = fit_with_bootstrap(synthetic_trials(0), n_boot=300, seed=1)
    print(f"\nS_min {f.s_min:.1f} (true {S_MIN}), B_noise {f.b_noise:.0f} (true {B_NOISE}), "
          f"ci95 {f.ci95}")
    assert f.s_min == pytest.approx(S_MIN, rel=0.05)
    assert f.b_noise == pytest.approx(B_NOISE, rel=0.05)
    lo, hi = f.ci95["s_min"]
    assert lo <= S_MIN <= hi
    lo, hi = f.ci95["b_crit"]
    assert lo <= B_NOISE <= hi


def test_too_few_points_give_no_fit() -> None:
    assert fit([8, 16], [100, 50]) is None


def test_regimes() -> None:
    f = fit(BATCHES, [truth(b) for b in BATCHES])
    assert regime(8, f) == "perfect scaling"
    assert regime(1024, f) == "diminishing returns"
    assert regime(2 ** 15, f) == "maximal data parallelism"


def test_interval_coverage_over_many_data_sets() -> None:
    """The bootstrap of a best-of-n is known to under-cover; measure by how much."""
    n, hits = 20, 0
    for seed in range(n):
        f = fit_with_bootstrap(synthetic_trials(seed), n_boot=200, seed=seed)
        hits += f.ci95["b_crit"][0] <= B_NOISE <= f.ci95["b_crit"][1]
    print(f"\nb_crit 95 % interval covered the truth in {hits}/{n} synthetic data sets")
    assert hits / n >= 0.75


def test_fit_many_equals_one_fit_per_row() -> None:
    """The bootstrap's stacked solve gives each row what fitting it alone gives (to the
    precision of that fit), including rows that fall back to a fit alone."""
    from tuner.analysis.fit import fit_many, fit_or_reason

    rng = np.random.default_rng(3)
    rows = [[truth(b) * float(np.exp(rng.normal(0, 0.2))) for b in BATCHES] for _ in range(200)]
    rows.append([1000.0] * len(BATCHES))  # flat: B_noise -> 0, no convergence alone
    rows.append([truth(b) for b in BATCHES])  # exact
    many = fit_many(BATCHES, np.array(rows))
    assert len(many) == len(rows)
    for row, (got, why) in zip(rows, many):
        alone, why_alone = fit_or_reason(BATCHES, row)
        assert why == why_alone
        if alone is None:
            assert got is None
            continue
        assert got is not None
        assert got[0] == pytest.approx(alone.s_min, rel=1e-5)
        assert got[1] == pytest.approx(alone.b_noise, rel=1e-5)
    assert fit_many(BATCHES[:2], np.array([[1.0, 2.0]])) == [(None, "fewer than 3 batch sizes "
                                                             "reached the target")]


def test_importances_use_at_most_256_trials_and_one_parameter_is_all() -> None:
    from tuner.analysis import sensitivity as sens
    from tuner.analysis.records import BatchStudy
    from tuner.core.space import Param

    rng = np.random.default_rng(0)
    space = {"learning_rate": Param("learning_rate", low=1e-3, high=1.0, log=True),
             "one_minus_momentum": Param("one_minus_momentum", low=0.01, high=1.0, log=True)}
    trials = []
    for i in range(600):
        lr, omm = 10 ** rng.uniform(-3, 0), 10 ** rng.uniform(-2, 0)
        steps = int(100 / lr ** 0.8 * (1 + 0.1 * omm))
        trials.append(TrialRecord(i, "reached", {"learning_rate": lr, "one_minus_momentum": omm},
                                  steps, value=float(steps)))
    st = BatchStudy(64, trials, space)
    picked = sens.importance_trials(st)
    assert len(picked) == sens.MAX_IMPORTANCE_TRIALS == 256
    assert [t.number for t in picked] == sorted(t.number for t in picked)
    assert picked == sens.importance_trials(st)  # seeded
    imp = sens.sensitivity(st)
    assert imp.importance_trials == 256 and imp.importances["learning_rate"] > 0.8
    one = BatchStudy(64, trials, {"learning_rate": space["learning_rate"]})
    assert sens.importances(one) == {"learning_rate": 1.0}


def test_a_target_met_at_step_0_has_no_fit_and_says_why() -> None:
    # imported data evaluate at step 0: a loose target is met before any training
    from tuner.analysis.fit import AT_START, fit_or_reason

    assert fit_or_reason([16, 64, 256, 1024], [40.0, 0.0, 12.0, 9.0]) == (None, AT_START)
    trials = {b: [TrialRecord(0, "reached", {}, steps_to_target=s)]
              for b, s in ((16, 0), (64, 10), (256, 4))}
    assert fit_with_bootstrap(trials, n_boot=10) is None


def test_sample_bests_draws_the_best_of_a_resample() -> None:
    """Drawing the best by inversion of its closed-form distribution gives the same distribution
    as resampling the pool with replacement and taking the minimum (ties and inf included)."""
    pool = np.array([130, 100, np.inf, 150, 100, 260, np.inf, 170, np.inf, 400], dtype=float)
    rng = np.random.default_rng(3)
    n = 200_000
    direct = sample_bests(pool, n, rng)
    brute = pool[rng.integers(0, len(pool), (n, len(pool)))].min(axis=1)
    for v in [100, 130, 150, 170, 260, 400, np.inf]:
        # each value's share within 4 standard errors of the brute-force share
        p = (brute == v).mean()
        assert abs((direct == v).mean() - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-4, v
    assert set(np.unique(direct)) <= set(pool)
    assert len(sample_bests(np.array([7.0]), 5, rng)) == 5
