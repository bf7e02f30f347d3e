"""The gradient noise scale of trained workloads (tuner.train.noise), against closed forms."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

from tuner.core.predict import measure_steps
from tuner.core.trial import Target, TrialRequest
from tuner.workload.trained import Data, TrainedWorkload

D, SIGMA, N = 8, 2.0, 40_000


class LeastSquares(TrainedWorkload):
    """Linear regression y = x w* + eps, x ~ N(0, I_d), eps ~ N(0, sigma^2), loss (x w - y)^2/2,
    the model w = 0 at initialisation (written as a workload plug-in is: workloads/README.md)."""

    name = "least_squares"
    metrics: ClassVar[dict[str, str]] = {"loss": "minimize"}
    metric_ranges: ClassVar[dict[str, tuple[float, float]]] = {"loss": (0.0, math.inf)}

    def num_train_examples(self) -> int:
        return N

    def load_data(self) -> Data:
        gen = torch.Generator().manual_seed(0)
        self.w_star = torch.randn(D, generator=gen)
        x = torch.randn(N, D, generator=gen)
        y = x @ self.w_star + SIGMA * torch.randn(N, generator=gen)
        return Data(x, y, x[:256], y[:256])

    def build_model(self) -> torch.nn.Module:
        model = torch.nn.Linear(D, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        return model

    def training_loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      step: int) -> torch.Tensor:
        return 0.5 * ((model(x).squeeze(1) - y) ** 2).mean()

    def evaluate(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> dict[str, float]:
        return {"loss": float(0.5 * ((model(x).squeeze(1) - y) ** 2).mean())}


def request(batch_size: int, steps: int, lr: float) -> TrialRequest:
    return TrialRequest(params={"learning_rate": lr}, optimizer="sgd", schedule="constant",
                        batch_size=batch_size, max_steps=steps, eval_steps=(steps,),
                        target=Target("loss", 0.0, "minimize"), seed=0,
                        divergence_factor=math.inf, accelerator="cpu", train_to_budget=True)


def test_least_squares_noise_scale_at_initialisation_matches_the_closed_form() -> None:
    """At w0 = 0 (learning rate 0: every measured step is at initialisation), with
    delta = w0 - w*: G = delta and Sigma = |delta|^2 I + delta delta' + sigma^2 I (Gaussian
    fourth moments), so B_simple = ((d + 1)|delta|^2 + d sigma^2) / |delta|^2. The estimate over
    100 measured batches is within 10 % of it, and so are |G|^2 and tr(Sigma)."""
    w = LeastSquares()
    ns = w.noise_scale(request(256, 100, 0.0), measure_steps(100, 100), 8, 0.0)
    delta_sq = float(w.w_star @ w.w_star)
    truth = ((D + 1) * delta_sq + D * SIGMA ** 2) / delta_sq
    assert len(ns.points) == 100 and ns.small_batch == 32 and ns.big_batch == 256
    g = sum(p.grad_norm_sq for p in ns.points) / 100
    t = sum(p.trace_sigma for p in ns.points) / 100
    assert g == pytest.approx(delta_sq, rel=0.1)
    assert t == pytest.approx((D + 1) * delta_sq + D * SIGMA ** 2, rel=0.1)
    assert ns.b_simple == pytest.approx(truth, rel=0.1), (ns.b_simple, truth)


def test_the_noise_scale_grows_as_training_approaches_the_optimum() -> None:
    """Training with SGD shrinks |G|^2 (here about 10x: (1 - lr)^(2t) with lr 0.01, 120 steps)
    while tr(Sigma) falls only toward d sigma^2, so B_simple rises (McCandlish et al.: the noise
    scale grows during training): here from about 15 over the first three measured steps to
    about 30 over the last three. The measured
    steps' updates are the batch's own gradient, so the run trains as a trial would."""
    w = LeastSquares()
    ns = w.noise_scale(request(256, 120, 0.01), measure_steps(120, 12), 8, 0.0)
    assert ns.diverged_at is None and ns.steps == 120 and len(ns.points) == 12

    def b_simple(points: list) -> float:
        return sum(p.trace_sigma for p in points) / sum(p.grad_norm_sq for p in points)

    start, end = b_simple(ns.points[:3]), b_simple(ns.points[-3:])
    assert end > 1.5 * start, (start, end)
    assert ns.points[-1].grad_norm_sq < 0.3 * ns.points[0].grad_norm_sq
