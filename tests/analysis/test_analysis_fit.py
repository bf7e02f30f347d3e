"""The McCandlish fit recovers known curves; the bootstrap interval covers the truth."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.analysis.fit import fit, fit_with_bootstrap, regime
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
