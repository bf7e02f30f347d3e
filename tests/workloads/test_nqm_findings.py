"""Zhang et al. 2019's findings, reproduced from stored NQM studies (the shipped specs, run
through `tuner run`, read back through `tuner curve --format json`). Prints the numbers.

Runs the five specs in full (about 4 minutes here): the measurement, not a stand-in for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SPECS = ["nqm_sgd", "nqm_momentum", "nqm_precond_p025", "nqm_precond_p050", "nqm_precond_p075"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def curves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """name -> curve JSON, from studies this fixture runs into a fresh SQLite file."""
    from tuner.run import runner, specs as spec_mod

    url = f"sqlite:///{tmp_path_factory.mktemp('nqm') / 'nqm.db'}"
    out = {}
    for name in SPECS:
        spec = spec_mod.load(Path("studies") / f"{name}.toml")
        # momentum: the two ends of the curve are what finding (d) compares
        sizes = (4, 2 ** 20) if name == "nqm_momentum" else spec.batch_sizes
        runner.run(spec, url, sizes, spec.trials)
    from tuner.store.source import load
    from tuner.analysis.summary import curve_json, spec_curve
    from tuner.store.storage import open_storage

    storage = open_storage(url)
    for name in SPECS:
        out[name] = curve_json(spec_curve(load(storage, name), n_boot=200))
    return out


def steps(curve: dict) -> dict[int, int]:
    return {p["batch_size"]: p["best_steps"] for p in curve["points"]}


def test_a_perfect_scaling_at_small_batch_sizes(curves: dict[str, dict]) -> None:
    s = steps(curves["nqm_sgd"])
    for b in (4, 16):  # batch sizes are every other power of two: 4x B per step
        per_doubling = (s[b] / s[4 * b]) ** 0.5
        print(f"\nSGD: steps {s[b]} at B={b}, {s[4 * b]} at B={4 * b}: x{per_doubling:.3f} per doubling")
        assert per_doubling == pytest.approx(2.0, rel=0.10)


def test_b_plateau_at_large_batch_sizes(curves: dict[str, dict]) -> None:
    s = steps(curves["nqm_sgd"])
    top = max(s)
    print(f"\nSGD: steps {s[top]} at B={top}, {s[top // 16]} at B={top // 16}")
    assert s[top] == pytest.approx(s[top // 16], rel=0.15)


def test_c_preconditioning_extends_perfect_scaling(curves: dict[str, dict]) -> None:
    names = ["nqm_sgd", "nqm_precond_p025", "nqm_precond_p050", "nqm_precond_p075"]
    b_crit = [curves[n]["fit"]["b_crit"] for n in names]
    print("\ncritical batch size by p = 0, 0.25, 0.5, 0.75: " + ", ".join(f"{b:.0f}" for b in b_crit))
    assert b_crit == sorted(b_crit) and b_crit[-1] > 10 * b_crit[0]


def test_d_momentum_helps_only_at_large_batch_sizes(curves: dict[str, dict]) -> None:
    sgd, mom = steps(curves["nqm_sgd"]), steps(curves["nqm_momentum"])
    small, large = 4, 2 ** 20
    gain_small, gain_large = sgd[small] / mom[small], sgd[large] / mom[large]
    print(f"\nmomentum speed-up over SGD: x{gain_small:.2f} at B={small}, x{gain_large:.1f} at B={large}")
    assert gain_small < 1.25 and gain_large > 5


def test_e_optimal_learning_rate_grows_linearly_in_perfect_scaling(curves: dict[str, dict]) -> None:
    lr = {p["batch_size"]: p["learning_rate"] for p in curves["nqm_sgd"]["points"]}
    for b in (4, 16, 64):
        growth = (lr[4 * b] / lr[b]) ** 0.5
        print(f"\nSGD optimal learning rate: {lr[b]:.4g} at B={b} -> {lr[4 * b]:.4g} at B={4 * b}: "
              f"x{growth:.2f} per doubling")
        assert 1.6 < growth < 2.4  # linear scaling is x2 per doubling; square-root would be x1.41
