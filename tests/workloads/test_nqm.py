"""The NQM's closed form: against step-by-step iteration, against Monte Carlo SGD, exactness of
steps-to-target (also for oscillating and critically damped momentum), and through `tuner run`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from conftest import SMALL_NQM, run_cli, write
from workloads.nqm import Dynamics, iterate, spectrum

CASES = [  # (lr, one_minus_momentum or None for SGD, B, p)
    (0.5, None, 16, 0.0), (1.9, None, 4096, 0.0), (0.3, None, 64, 0.5), (0.05, None, 4, 0.75),
    (1.0, 0.1, 64, 0.0), (0.3, 0.01, 8, 0.5), (2.5, 0.5, 1024, 0.25), (0.05, 0.001, 4, 0.0),
    (0.5, 0.19, 256, 0.0),  # a_50 = (1 - sqrt(m))^2: a critically damped direction
]


@pytest.mark.parametrize("lr, omm, b, p", CASES)
def test_closed_form_equals_iterating_the_recursion(lr: float, omm: float | None, b: int,
                                                    p: float) -> None:
    h = spectrum(2000)
    d = Dynamics(h, lr, omm, b, p)
    steps = 2000
    brute = iterate(h, lr, omm, b, p, steps)
    closed = d.loss(np.arange(steps + 1))
    assert np.max(np.abs(closed - brute) / brute) < 1e-9


def test_unstable_step_sizes_diverge() -> None:
    h = spectrum(100)
    assert Dynamics(h, 2.0, None, 8).diverged and not Dynamics(h, 1.99, None, 8).diverged
    # heavy ball is stable up to a < 2 (1 + m)
    assert not Dynamics(h, 3.5, 0.1, 8).diverged and Dynamics(h, 3.9, 0.05, 8).diverged


def random_cases(n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        omm = None if rng.random() < 0.4 else float(10 ** rng.uniform(-3, 0))
        p = float(rng.choice([0.0, 0.25, 0.5, 0.75]))
        out.append((float(10 ** rng.uniform(-2, 0.4)), omm, int(2 ** rng.integers(0, 14)), p,
                    float(10 ** rng.uniform(-3, -0.5))))
    # critically damped directions on purpose: a_i = (1 - sqrt(m))^2 for i = 7 and 50
    out += [(1.75, 0.75, 8192, 0.0, 0.004), (0.5, 0.19, 4096, 0.0, 0.005)]
    return out


def test_steps_to_target_is_exact_against_brute_force() -> None:
    h = spectrum(300)
    steps = 3000
    n_hits = n_nonmonotone = 0
    for lr, omm, b, p, target in random_cases(150, seed=1):
        d = Dynamics(h, lr, omm, b, p)
        if d.diverged:
            continue
        brute = iterate(h, lr, omm, b, p, steps)
        expected = next((t for t, v in enumerate(brute) if v <= target), None)
        assert d.first_hit(target, steps) == expected, (lr, omm, b, p, target)
        n_hits += expected is not None
        n_nonmonotone += bool(np.any(np.diff(brute) > 0))
    print(f"\n{n_hits} hits, {n_nonmonotone} non-monotone curves, all exact")
    assert n_hits > 20 and n_nonmonotone > 5


def test_oscillating_momentum_first_dip_is_found() -> None:
    """Underdamped momentum dips below the target, comes back above, then settles below."""
    h = np.array([1.0])
    d = Dynamics(h, 1.0, 0.05, 10**6)  # a = 1, m = 0.95: strongly underdamped
    brute = iterate(h, 1.0, 0.05, 10**6, 0.0, 400)
    target = float(np.sort(brute[:60])[3])  # a level the curve crosses several times early on
    first = next(t for t, v in enumerate(brute) if v <= target)
    assert np.any(brute[first:] > target)  # it goes back above
    assert d.first_hit(target, 400) == first


def monte_carlo(h: np.ndarray, lr: float, omm: float | None, b: int, p: float,
                checkpoints: list[int], replicas: int, seed: int,
                ema: float = 0.0) -> dict[int, tuple[float, float]]:
    """Real noisy (momentum) SGD on the quadratic: mean and standard error of the loss (at the
    exponential moving average of the iterates if ``ema`` > 0)."""
    g = torch.Generator().manual_seed(seed)
    ht = torch.tensor(h, dtype=torch.float64)
    x = torch.randn(replicas, len(h), generator=g, dtype=torch.float64)
    u = torch.zeros_like(x)
    avg = x.clone()
    m = 0.0 if omm is None else 1.0 - omm
    pre = ht ** (-p)
    out = {}
    for t in range(1, max(checkpoints) + 1):
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64) * torch.sqrt(ht / b)
        u = m * u - lr * pre * (ht * x + noise)
        x = x + u
        avg = ema * avg + (1 - ema) * x
        if t in checkpoints:
            at = avg if ema > 0 else x
            loss = 0.5 * (ht * at * at).sum(dim=1)
            out[t] = (loss.mean().item(), loss.std().item() / replicas ** 0.5)
    return out


@pytest.mark.parametrize("lr, omm, b, p, ema", [(0.8, None, 4, 0.0, 0.0), (0.3, 0.1, 2, 0.5, 0.0),
                                                (0.8, None, 4, 0.0, 0.9),
                                                (0.3, 0.1, 2, 0.5, 0.95)])
def test_closed_form_matches_monte_carlo_sgd(lr: float, omm: float | None, b: int, p: float,
                                             ema: float) -> None:
    h = spectrum(100)
    checkpoints = [1, 5, 20, 60, 200]
    mc = monte_carlo(h, lr, omm, b, p, checkpoints, replicas=10000, seed=0, ema=ema)
    closed = Dynamics(h, lr, omm, b, p, ema).loss(np.array(checkpoints))
    for t, expected in zip(checkpoints, closed):
        mean, se = mc[t]
        print(f"t={t}: closed {expected:.5f}  Monte Carlo {mean:.5f} +- {se:.5f}")
        assert abs(mean - expected) < 4 * se, (t, mean, se, expected)


NQM_SPEC = SMALL_NQM


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_runs_through_tuner_run_with_exact_values(ema: float, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    text = NQM_SPEC.replace("dimensions = 1000", f"dimensions = 1000\nema = {ema}")
    spec = write(tmp_path, text, "nqm_small.toml")
    url = f"sqlite:///{tmp_path / 'n.db'}"
    code, out, err = run_cli(["run", str(spec), "--storage", url], capsys)
    assert code == 0, err
    h = spectrum(1000)
    seen = set()
    for s in optuna.get_all_study_summaries(url):
        b = s.user_attrs["batch_size"]
        trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
        assert len(trials) == 12
        for t in trials:
            a = t.user_attrs
            seen.add(a["outcome"])
            d = Dynamics(h, t.params["learning_rate"], t.params["one_minus_momentum"], b, 0.0, ema)
            if a["reached"]:
                assert t.value == a["steps_to_target"] == d.first_hit(0.01, 10**8)
                assert a["steps_to_target_after"] == a["steps_to_target"] - 1  # exact
                steps = sorted(t.intermediate_values)
                assert steps[-1] == a["steps_to_target"]
                assert t.intermediate_values[steps[-1]] <= 0.01 < t.intermediate_values[steps[-2]]
            elif a["diverged"]:
                assert d.diverged and t.value == 10**8
    assert {"reached", "diverged"} <= seen


def test_spec_refuses_what_the_closed_form_does_not_cover(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for old, new, key in [('name = "momentum"', 'name = "nesterov"', "optimizer.name"),
                          ("max_steps = 100_000_000", "max_epochs = 3", "budget.max_epochs"),
                          ('name = "momentum"', 'name = "momentum"\nweight_decay = 0.1',
                           "optimizer.weight_decay"),
                          ("dimensions = 1000", "dimensions = 1000\nema = 1.0", "workload.ema"),
                          ("dimensions = 1000", "dimensions = 1000\nema = -0.5", "workload.ema")]:
        spec = write(tmp_path, NQM_SPEC.replace(old, new), "bad.toml")
        code, _, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{tmp_path}/b.db"],
                               capsys)
        assert code == 2 and f": {key}:" in err, err


def test_bounds_stay_below_the_loss() -> None:
    """Coarse (aggregates) and fine (term by term) bounds never exceed L anywhere in their
    interval (checked at up to 200 steps of each), for every family of terms."""
    rng = np.random.default_rng(5)
    h = spectrum(3000)
    checked = 0
    for lr, omm, b, p, _ in random_cases(60, seed=11):
        d = Dynamics(h, lr, omm, b, p)
        if d.diverged:
            continue
        for _ in range(5):
            t0 = int(10 ** rng.uniform(0, 7))
            t1 = t0 + int(rng.integers(0, t0 + 1))
            lowest = d.loss(np.unique(np.linspace(t0, t1, 200).astype(int))).min()
            assert d._bound(t0, t1, fine=False) <= lowest, (lr, omm, b, p, t0, t1)
            assert d._bound(t0, t1, fine=True) <= lowest, (lr, omm, b, p, t0, t1)
            checked += 1
    assert checked > 200


def test_window_encloses_the_exact_loss() -> None:
    """Every step of a Taylor-group window lies within its error bound of the closed form."""
    rng = np.random.default_rng(3)
    checked = 0
    for k in (300, 3000):
        h = spectrum(k)
        for lr, omm, b, p, _ in random_cases(40, seed=k):
            d = Dynamics(h, lr, omm, b, p)
            if d.diverged:
                continue
            for _ in range(3):
                t = int(10 ** rng.uniform(0, 6))
                w = int(min(1024, 4 * t, 2 ** rng.integers(0, 11)))
                v, err = d.enclose(t, w)
                exact = d.loss(np.arange(t, t + w))
                assert np.all(np.abs(v - exact) <= err), (lr, omm, b, p, t, w)
                checked += 1
    assert checked > 150


@pytest.mark.parametrize("window", [1, 16, 4096])
def test_steps_to_target_is_exact_for_any_window_length(window: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 1 step (bisection all the way down), 16 steps, and long ones."""
    import workloads.nqm as nqm

    monkeypatch.setattr(nqm, "WINDOW", window)
    h = spectrum(300)
    steps = 3000
    n_hits = 0
    for lr, omm, b, p, target in random_cases(40, seed=2):
        d = Dynamics(h, lr, omm, b, p)
        if d.diverged:
            continue
        brute = iterate(h, lr, omm, b, p, steps)
        expected = next((t for t, v in enumerate(brute) if v <= target), None)
        assert d.first_hit(target, steps) == expected, (lr, omm, b, p, target)
        n_hits += expected is not None
    assert n_hits > 5


def test_slowly_decaying_oscillations_are_exact() -> None:
    """1 - m = 1e-4: thousands of oscillating directions decaying over ~1e4 steps, the regime
    where interval bounds fail over long stretches and windows enclose every step."""
    h = spectrum(300)
    steps = 60_000
    found = 0
    for lr, b in [(0.05, 1024), (0.9, 2 ** 20), (0.003, 256)]:
        brute = iterate(h, lr, 1e-4, b, 0.0, steps)
        for target in np.quantile(brute[10_000:], [0.02, 0.3]):
            d = Dynamics(h, lr, 1e-4, b, 0.0)
            expected = next((t for t, v in enumerate(brute) if v <= target), None)
            assert d.first_hit(float(target), steps) == expected
            found += d.windows > 3
    assert found  # the windows did the work


EMA_CASES = [  # (lr, one_minus_momentum or None, B, p, beta)
    (0.5, None, 16, 0.0, 0.9), (1.0, 0.1, 64, 0.0, 0.99), (0.3, 0.01, 8, 0.5, 0.9),
    (2.5, 0.5, 1024, 0.25, 0.999), (0.05, 0.001, 4, 0.0, 0.95), (3.5, 0.1, 8, 0.0, 0.9),
    (0.1, None, 64, 0.0, 0.9),  # a_1 = 1 - beta: l1 = beta exactly (resonance, exact powers)
    (1.5, None, 64, 0.0, 0.9),  # a_1 > 1: a negative eigenvalue, alternating beta l modes
]


@pytest.mark.parametrize("lr, omm, b, p, beta", EMA_CASES)
def test_ema_closed_form_equals_iterating_the_recursion(lr: float, omm: float | None, b: int,
                                                        p: float, beta: float) -> None:
    h = spectrum(2000)
    d = Dynamics(h, lr, omm, b, p, beta)
    brute = iterate(h, lr, omm, b, p, 2000, beta)
    closed = d.loss(np.arange(2001))
    assert np.max(np.abs(closed - brute) / brute) < 1e-9


def test_ema_resonant_and_alternating_directions_are_stepped_exactly() -> None:
    """The two last EMA cases put direction 1 on l1 = beta and on l1 < 0: evaluated by powers."""
    h = spectrum(2000)
    for lr in (0.1, 1.5):
        d = Dynamics(h, lr, None, 64, 0.0, 0.9)
        assert d.stepped is not None and len(d.stepped) < 20


def test_ema_steps_to_target_is_exact_against_brute_force() -> None:
    rng = np.random.default_rng(8)
    h = spectrum(300)
    steps = 3000
    n_hits = n_stepped = 0
    cases = [(*c, float(rng.choice([0.5, 0.9, 0.99, 0.999]))) for c in random_cases(80, seed=4)]
    cases += [(lr, None, 64, 0.0, target, 0.9) for lr in (0.1, 1.5) for target in (0.05, 0.02)]
    for lr, omm, b, p, target, beta in cases:
        d = Dynamics(h, lr, omm, b, p, beta)
        if d.diverged:
            continue
        brute = iterate(h, lr, omm, b, p, steps, beta)
        expected = next((t for t, v in enumerate(brute) if v <= target), None)
        assert d.first_hit(target, steps) == expected, (lr, omm, b, p, target, beta)
        n_hits += expected is not None
        n_stepped += d.stepped is not None
    assert n_hits > 20 and n_stepped > 2


def test_ema_windows_and_bounds() -> None:
    """Window enclosures and interval bounds hold with EMA (stepped directions included)."""
    rng = np.random.default_rng(9)
    h = spectrum(1000)
    extra = [(0.1, None, 64, 0.0, 0), (1.5, None, 64, 0.0, 0)]  # stepped directions
    for lr, omm, b, p, _ in random_cases(30, seed=5) + extra:
        beta = float(rng.choice([0.5, 0.9, 0.99, 0.999]))
        d = Dynamics(h, lr, omm, b, p, beta)
        if d.diverged:
            continue
        for _ in range(3):
            t = int(10 ** rng.uniform(0, 6))
            w = int(min(2048, 4 * t, 2 ** rng.integers(0, 12)))
            v, err = d.enclose(t, w)
            assert np.all(np.abs(v - d.loss(np.arange(t, t + w))) <= err), (lr, omm, b, p, beta, t)
            lowest = d.loss(np.unique(np.linspace(t, 2 * t, 100).astype(int))).min()
            assert d._bound(t, 2 * t, fine=True) <= lowest and d._bound(t, 2 * t, False) <= lowest


def test_oscillation_window_with_frequencies_near_0_and_2pi() -> None:
    """Frequencies phi in (0, 2 pi): those rounding to bin 0 and to bin n (the same frequency on
    the FFT grid) both count. More than OSC_DIRECT terms, so the FFT path runs."""
    from workloads.nqm_terms import OSC_DIRECT, Oscillations

    rng = np.random.default_rng(5)
    k = OSC_DIRECT + 104
    phi = np.r_[0.01, 2 * np.pi - 0.01, rng.uniform(0.001, 2 * np.pi - 0.001, k - 2)]
    osc = Oscillations(rng.uniform(0.1, 1.0, k), phi, rng.uniform(-np.pi, np.pi, k))
    for t, w in ((1, 4), (7, 30), (1000, 2048)):
        v, err, _ = osc.window(t, w)
        exact = osc.values(np.arange(t, t + w, dtype=np.float64))
        assert np.all(np.abs(v - exact) <= err), (t, w, np.abs(v - exact).max(), err)


def test_momentum_at_the_stability_edge_is_exact() -> None:
    """A learning rate just inside the momentum stability limit (1 + sqrt(m))^2: the eigenvalues
    are complex with argument near pi, so 2 x their argument is near 2 pi."""
    h = spectrum(10_000)
    omm = 1e-3
    lr = (1 + np.sqrt(1 - omm)) ** 2 * (1 - 1e-6)
    d = Dynamics(h, lr, omm, 4, 0.0)
    assert not d.diverged
    v, err = d.enclose(50, 16)
    assert np.all(np.abs(v - d.loss(np.arange(50, 66))) <= err)
    brute = iterate(h, lr, omm, 4, 0.0, 400)
    expected = next((t for t, x in enumerate(brute) if x <= 0.01), None)
    assert d.first_hit(0.01, 400) == expected
