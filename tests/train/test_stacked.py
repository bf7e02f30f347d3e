"""The stacked optimizer updates against torch.optim, step by step, each lane its own metaparameters."""

from __future__ import annotations

import pytest
import torch

from tuner.train.optim import build_optimizer, build_schedule
from tuner.train.stacked import STACKED, StackedOptimizer, schedule_factor

#: Three lanes' metaparameters per optimizer (weight decay on in some lanes, off in others).
LANES = {
    "sgd": [{"learning_rate": 0.1, "weight_decay": 0.0},
            {"learning_rate": 0.02, "weight_decay": 0.01},
            {"learning_rate": 0.5, "weight_decay": 0.0}],
    "momentum": [{"learning_rate": 0.1, "one_minus_momentum": 0.1, "weight_decay": 0.0},
                 {"learning_rate": 0.02, "one_minus_momentum": 0.5, "weight_decay": 0.01},
                 {"learning_rate": 0.3, "one_minus_momentum": 0.01, "weight_decay": 0.0}],
    "adam": [{"learning_rate": 1e-3, "one_minus_beta1": 0.1, "one_minus_beta2": 0.001,
              "epsilon": 1e-8, "weight_decay": 0.0},
             {"learning_rate": 3e-2, "one_minus_beta1": 0.5, "one_minus_beta2": 0.05,
              "epsilon": 1e-4, "weight_decay": 0.1},
             {"learning_rate": 1e-2, "one_minus_beta1": 0.01, "one_minus_beta2": 0.01,
              "epsilon": 1e-6, "weight_decay": 0.0}],
}
LANES["nesterov"] = LANES["momentum"]
LANES["adamw"] = [{**hp, "weight_decay": hp["weight_decay"] or 0.01} for hp in LANES["adam"]]


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


@pytest.mark.parametrize("name", STACKED)
def test_each_lane_follows_torch_optim(name: str) -> None:
    torch.manual_seed(0)
    lanes = LANES[name]
    models = [model() for _ in lanes]
    opts = [build_optimizer(name, m, hp) for m, hp in zip(models, lanes)]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach().clone() for m in models])
              for n, _ in models[0].named_parameters()}
    stacked = StackedOptimizer(name, params)
    for k, hp in enumerate(lanes):
        stacked.set_lane(k, hp)
    factors = torch.rand(6, len(lanes)).tolist()  # a schedule's factor per lane and step
    for step in range(6):
        grads: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        for k, (m, opt) in enumerate(zip(models, opts)):
            x = torch.randn(8, 5)
            m.zero_grad()
            m(x).pow(2).mean().backward()
            for n, p in m.named_parameters():
                grads[n].append(p.grad.clone())
            for group in opt.param_groups:  # what a scheduler does to the group
                group["lr"] = lanes[k]["learning_rate"] * factors[step][k]
            opt.step()
        stacked.step(params, {n: torch.stack(g) for n, g in grads.items()}, factors[step])
        for k, m in enumerate(models):
            for n, p in m.named_parameters():
                torch.testing.assert_close(params[n][k], p.detach(), rtol=1e-5, atol=1e-6,
                                           msg=f"{name} lane {k} {n} step {step}")


def test_a_refilled_lane_starts_fresh_and_kept_lanes_keep_their_state() -> None:
    torch.manual_seed(0)
    params = {"w": torch.zeros(3, 2)}
    opt = StackedOptimizer("momentum", params)
    for k in range(3):
        opt.set_lane(k, {"learning_rate": 1.0, "one_minus_momentum": 0.5})
    opt.step(params, {"w": torch.ones(3, 2)}, [1.0, 1.0, 1.0])  # buffers: 1
    opt.set_lane(1, {"learning_rate": 1.0, "one_minus_momentum": 0.5})  # lane 1: a new trial
    opt.keep([1, 2])  # lane 0 ended
    params = {"w": params["w"][[1, 2]]}
    opt.step(params, {"w": torch.ones(2, 2)}, [1.0, 1.0])
    # fresh lane: buf = 1, w = -1 - 1; kept lane: buf = 0.5 * 1 + 1 = 1.5, w = -1 - 1.5
    assert params["w"][:, 0].tolist() == [-2.0, -2.5]


def test_an_optimizer_it_cannot_stack_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed: sgd, momentum"):
        StackedOptimizer("lamb", {"w": torch.zeros(2, 1)})


@pytest.mark.parametrize("schedule,hp", [
    ("constant", {}),
    ("linear_decay", {"end_factor": 0.01, "decay_fraction": 0.6}),
    ("warmup_linear", {"end_factor": 0.1, "warmup_fraction": 0.2}),
    ("warmup_cosine", {"end_factor": 0.0, "warmup_fraction": 0.1}),
])
def test_schedule_factor_is_what_the_scheduler_applies(schedule: str, hp: dict) -> None:
    m = torch.nn.Linear(1, 1)
    opt = build_optimizer("sgd", m, {"learning_rate": 1.0})
    sched = build_schedule(schedule, opt, hp, 50)
    for step in range(55):
        assert schedule_factor(schedule, hp, 50, step) == pytest.approx(
            opt.param_groups[0]["lr"], rel=1e-6, abs=1e-9), step
        opt.step()
        if sched is not None:
            sched.step()
