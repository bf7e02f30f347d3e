"""The NQM's local critical batch size, computed by branching (workloads/nqm.py: branch_losses),
against brute-force iteration and against real momentum SGD in PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tuner.core.branching import LR_RULES, Branch, LocalCBS, finish, local_cbs
from tuner.core.trial import Target, TrialRequest
from tuner.core.errors import UsageError
from workloads.nqm import NQM, NQMOptions, branch_losses, spectrum


def brute_force(h: np.ndarray, lr: float, omm: float | None, b0: int, p: float, t0: int,
                k: int, rule: str, steps: int) -> float:
    """E L after t0 steps at (lr, b0), then ``steps`` at (lr r, k b0), one step at a time on
    (E x^2, E u^2, E xu), the displacement u rescaled by r at the switch."""
    m = 0.0 if omm is None else 1.0 - omm
    xx, uu, xu = np.ones_like(h), np.zeros_like(h), np.zeros_like(h)

    def step(xx, uu, xu, lr_, b):  # noqa: ANN001, ANN202
        a = lr_ * h ** (1 - p)
        n = lr_ * lr_ * h ** (-2 * p) * h / b
        return ((1 - a) ** 2 * xx + m * m * uu + 2 * m * (1 - a) * xu + n,
                a * a * xx + m * m * uu - 2 * m * a * xu + n,
                -a * (1 - a) * xx + m * m * uu + m * (1 - 2 * a) * xu + n)

    for _ in range(t0):
        xx, uu, xu = step(xx, uu, xu, lr, b0)
    r = LR_RULES[rule](k)
    uu, xu = uu * r * r, xu * r
    for _ in range(steps):
        xx, uu, xu = step(xx, uu, xu, lr * r, k * b0)
    return float(0.5 * h @ xx)


@pytest.mark.parametrize("lr, omm, p, rule", [(0.05, None, 0.0, "linear"),
                                              (0.02, 0.1, 0.5, "sqrt"),
                                              (0.01, 0.3, 0.0, "linear")])
def test_branches_equal_brute_force_iteration(lr: float, omm: float | None, p: float,
                                              rule: str) -> None:
    h = spectrum(300)
    at, factors, horizon = [0, 40, 200], [1, 2, 4, 8, 16], 64
    got = branch_losses(h, lr, omm, 8, p, at, factors, rule, horizon)
    for c in got:
        assert c.reference_loss == pytest.approx(
            brute_force(h, lr, omm, 8, p, c.step, 1, "constant", horizon), rel=1e-10)
        for br in c.branches:
            assert br.steps == horizon // br.factor and br.batch_size == 8 * br.factor
            want = brute_force(h, lr, omm, 8, p, c.step, br.factor, rule, br.steps)
            if br.loss is None:
                assert not math.isfinite(want) or want > 1e6
            else:
                assert br.loss == pytest.approx(want, rel=1e-10)
        # factor 1 with any rule is the reference itself
        assert c.branches[0].loss == pytest.approx(c.reference_loss, rel=1e-10)
    # the local CBS from the branches equals the one from brute-force losses
    for c in got:
        brute = [Branch(k, 8 * k, 0.0, horizon // k,
                        brute_force(h, lr, omm, 8, p, c.step, k, rule, horizon // k))
                 for k in factors]
        assert local_cbs(8, c.reference_loss, c.branches, 0.02) == \
            local_cbs(8, c.reference_loss, brute, 0.02)


def test_branch_matches_momentum_sgd_in_pytorch_with_the_buffer_carried_over() -> None:
    """20,000 replicas of real noisy momentum SGD on the quadratic (torch.optim.SGD), the
    learning rate and batch size changed at the checkpoint with the optimizer state kept:
    their mean loss equals the closed form's within 3 %."""
    k_dims, lr, omm, b0, t0, horizon, factor = 20, 0.2, 0.2, 2, 15, 16, 4
    h = spectrum(k_dims)
    c = branch_losses(h, lr, omm, b0, 0.0, [t0], [factor], "linear", horizon)[0]
    gen = torch.Generator().manual_seed(0)
    ht = torch.tensor(h, dtype=torch.float64)
    reps = 20_000
    x = torch.randn(reps, k_dims, generator=gen, dtype=torch.float64).requires_grad_()
    opt = torch.optim.SGD([x], lr=lr, momentum=1 - omm)

    def train(steps: int, b: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            noise = torch.randn(reps, k_dims, generator=gen, dtype=torch.float64)
            (0.5 * (ht * x * x).sum()).backward()
            x.grad += noise * torch.sqrt(ht / b)  # a batch of b: noise of covariance H / b
            opt.step()

    train(t0, b0)
    for g in opt.param_groups:
        g["lr"] = lr * factor
    train(horizon // factor, b0 * factor)
    mc = float((0.5 * (ht * x.detach() ** 2).sum(1)).mean())
    assert c.branches[0].loss == pytest.approx(mc, rel=0.03)


def test_local_cbs_is_the_largest_batch_size_that_keeps_up_from_b0() -> None:
    br = [Branch(2, 16, 0.2, 32, 1.00), Branch(4, 32, 0.4, 16, 1.009),
          Branch(8, 64, 0.8, 8, 1.5), Branch(16, 128, 1.6, 4, 1.0)]
    assert local_cbs(8, 1.0, br, 0.01) == 32  # 16 keeps up again, but 8 broke the chain
    assert local_cbs(8, 1.0, br, 0.001) == 16
    assert local_cbs(8, 0.5, br, 0.01) == 8
    assert local_cbs(8, 1.0, [Branch(2, 16, 0.2, 32, None)], 1.0) == 8  # diverged
    r = finish(LocalCBS(8, "linear", 0.01, 64, "m", []))
    assert r.checkpoints == [] and r.to_json()["batch_size"] == 8


def test_nqm_refuses_ema_and_an_unstable_reference() -> None:
    req = TrialRequest(params={"learning_rate": 0.5}, optimizer="sgd", schedule="constant",
                       batch_size=8, max_steps=100, eval_steps=(100,),
                       target=Target("loss", 0.01, "minimize"), seed=0)
    with pytest.raises(UsageError, match="ema = 0"):
        NQM(NQMOptions(dimensions=50, ema=0.9)).branch(req, [0], [2], "linear", 8)
    bad = TrialRequest(**{**req.__dict__, "params": {"learning_rate": 5.0}})
    with pytest.raises(UsageError, match="unstable"):
        NQM(NQMOptions(dimensions=50)).branch(bad, [0], [2], "linear", 8)
    r = NQM(NQMOptions(dimensions=50)).branch(req, [0, 10], [2, 4], "linear", 8)
    assert [c.step for c in r.checkpoints] == [0, 10] and r.method.startswith("exact")
