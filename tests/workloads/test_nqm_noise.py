"""The NQM's gradient noise scale, exact (workloads/nqm.py), against real noisy SGD."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_NQM, run_cli, write
from tuner.core.predict import two_batch
from tuner.core.trial import Target, TrialRequest
from workloads.nqm import NQM, NQMOptions, iterate, second_moments, spectrum


@pytest.mark.parametrize("lr, omm, p", [(0.8, None, 0.0), (0.3, 0.1, 0.5)])
def test_second_moments_equal_iterating_the_recursion(lr: float, omm: float | None,
                                                      p: float) -> None:
    h = spectrum(200)
    steps = [0, 1, 2, 17, 300]
    s = second_moments(h, lr, omm, 8, p, steps)
    np.testing.assert_allclose(0.5 * s @ h, iterate(h, lr, omm, 8, p, 300)[steps], rtol=1e-12)


def request(lr: float, omm: float | None, b: int, steps: int) -> TrialRequest:
    params = {"learning_rate": lr, **({"one_minus_momentum": omm} if omm else {})}
    return TrialRequest(params=params, optimizer="momentum" if omm else "sgd",
                        schedule="constant", batch_size=b, max_steps=steps,
                        eval_steps=(steps,), target=Target("loss", 0.01, "minimize"), seed=0)


@pytest.mark.parametrize("lr, omm, b, p", [(0.8, None, 4, 0.0), (0.3, 0.1, 2, 0.5)])
def test_exact_noise_scale_matches_monte_carlo_with_the_two_batch_estimator(
        lr: float, omm: float | None, b: int, p: float) -> None:
    """Real noisy (momentum, preconditioned) SGD on the quadratic, 10,000 replicas: at each
    checkpoint, k micro-batch gradients (H x plus noise of covariance H / (B/k) each) give the
    two-batch estimates; their means equal the exact E|G|^2 = sum h^2 E x^2(t) and tr(Sigma) =
    sum h within 4 standard errors, and B_simple within 5 %."""
    k_dims, reps, k = 100, 10_000, 4
    h = spectrum(k_dims)
    checkpoints = [0, 3, 20, 80]
    w = NQM(NQMOptions(dimensions=k_dims, precondition_power=p))
    exact = w.noise_scale(request(lr, omm, b * k, 100), checkpoints, k, 0.0)
    assert [q.step for q in exact.points] == checkpoints
    g = torch.Generator().manual_seed(1)
    ht = torch.tensor(h, dtype=torch.float64)
    x = torch.randn(reps, k_dims, generator=g, dtype=torch.float64)
    u = torch.zeros_like(x)
    m = 0.0 if omm is None else 1.0 - omm
    big = b * k  # the batch the optimizer uses: k micro-batches of b
    for t in range(max(checkpoints) + 1):
        if t not in checkpoints:  # the batch's gradient only: H x plus noise H / B
            noise = torch.randn(reps, k_dims, generator=g, dtype=torch.float64)
            u = m * u - lr * ht ** (-p) * (ht * x + noise * torch.sqrt(ht / big))
            x = x + u
            continue
        # a measured step: k micro-batch gradients, each H x plus noise H / b
        micro = ht * x + torch.randn(k, reps, k_dims, generator=g, dtype=torch.float64) \
            * torch.sqrt(ht / b)
        small_sq = (micro ** 2).sum(dim=2).mean(dim=0)
        big_sq = (micro.mean(dim=0) ** 2).sum(dim=1)
        grad, trace = two_batch(b, big, small_sq, big_sq)
        point = exact.points[checkpoints.index(t)]
        for est, truth in ((grad, point.grad_norm_sq), (trace, point.trace_sigma)):
            se = est.std().item() / math.sqrt(reps)
            assert abs(est.mean().item() - truth) < 4 * se, (t, est.mean().item(), truth)
        mc_b = trace.mean().item() / grad.mean().item()
        assert mc_b == pytest.approx(point.b_simple, rel=0.05), (t, mc_b, point.b_simple)
        u = m * u - lr * ht ** (-p) * micro.mean(dim=0)
        x = x + u
    # B_simple grows as the expected gradient shrinks
    assert exact.points[-1].b_simple > 3 * exact.points[0].b_simple


def test_noise_scale_through_the_cli_is_stored_and_shown_by_curve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tuner run, then tuner noise-scale at the best trial's metaparameters (exact: no
    estimator), stored with the study; tuner curve's JSON and table show it beside B_crit."""
    spec = write(tmp_path, SMALL_NQM)
    url = f"sqlite:///{tmp_path / 'n.db'}"
    assert run_cli(["run", str(spec), "--storage", url, "-q"], capsys)[0] == 0
    code, out, err = run_cli(["noise-scale", str(spec), "-b", "16", "--storage", url,
                              "--points", "5", "--format", "json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["method"].startswith("exact") and got["stored_in"] == "spec.B16.seed0"
    assert len(got["points"]) == 5 and got["points"][0]["step"] == 0
    assert got["params_from"].startswith("the best trial")
    # at initialisation E x^2 = 1: B_simple(0) = sum h / sum h^2, exactly
    h = spectrum(1000)
    assert got["points"][0]["b_simple"] == pytest.approx(h.sum() / (h * h).sum(), rel=1e-12)
    code, out, err = run_cli(["curve", str(spec), "--storage", url, "--format", "json"],
                             capsys)
    cbs = json.loads(out)["cbs"]
    assert [n["batch_size"] for n in cbs["b_simple"]] == [16]
    assert cbs["b_simple"][0]["b_simple"] == pytest.approx(got["b_simple"])
    code, out, err = run_cli(["curve", str(spec), "--storage", url], capsys)
    assert code == 0 and "B_simple (noise scale) = " in out and "(at B = 16" in out
    code, out, err = run_cli(["report", str(spec), "--storage", url, "--out",
                              str(tmp_path / "r"), "--no-dashboard"], capsys)
    page = (tmp_path / "r" / "index.html").read_text()
    assert code == 0 and "The critical batch size, three ways" in page
    assert "Zhang et al.&#x27;s critical batch size" in page and "(at B = 16," in page
