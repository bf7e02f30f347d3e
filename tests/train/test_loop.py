"""The training loop on real digits data: stopping rule, divergence, pruning, reproducibility."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tuner.spec.cadence import eval_steps
from tuner.workload import Target, TrialRequest
from workloads.digits import Digits, DigitsOptions


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(DigitsOptions(hidden=[32]))


def request(**kw: object) -> TrialRequest:
    base = TrialRequest(
        params={"learning_rate": 0.1, "one_minus_momentum": 0.1, "weight_decay": 0.0},
        optimizer="momentum", schedule="constant", batch_size=32, max_steps=300,
        eval_steps=eval_steps(300, 5, 0.05, 5), target=Target("error", 0.1, "minimize"),
        seed=123, accelerator="cpu",
    )
    return dataclasses.replace(base, **kw)


def never(step: int, metrics: dict[str, float]) -> bool:
    return False


def test_stops_at_first_evaluation_that_reaches_target(digits: Digits) -> None:
    seen: list[int] = []
    r = digits.run(request(), lambda s, m: seen.append(s) or False)
    assert r.reached and not r.diverged and not r.pruned
    assert r.steps_to_target == r.stopped_at_step == seen[-1]
    assert [s for s, _ in r.curve] == seen == list(request().eval_steps[:len(seen)])
    errors = [m["error"] for _, m in r.curve]
    assert errors[-1] <= 0.1 and all(e > 0.1 for e in errors[:-1])
    assert r.examples_seen == 32 * r.stopped_at_step
    assert r.best_metric == min(errors)


def test_same_seed_same_trial_other_seed_differs(digits: Digits) -> None:
    a, b = digits.run(request(), never), digits.run(request(), never)
    assert a.curve == b.curve and a.steps_to_target == b.steps_to_target
    c = digits.run(request(seed=7), never)
    assert c.curve != a.curve


def test_nonfinite_loss_stops_at_once_as_diverged(digits: Digits) -> None:
    r = digits.run(request(params={"learning_rate": 1e8, "one_minus_momentum": 0.1,
                                   "weight_decay": 0.0}), never)
    assert r.diverged and not r.reached and r.steps_to_target is None
    assert r.stopped_at_step < 10  # stopped at once, not at the budget


def test_missed_runs_the_whole_budget(digits: Digits) -> None:
    r = digits.run(request(target=Target("error", 0.0, "minimize"), max_steps=40,
                           eval_steps=eval_steps(40, 5, 0.05, 5)), never)
    assert not r.reached and not r.diverged and not r.pruned and r.stopped_at_step == 40
    assert r.curve[-1][0] == 40


def test_reporter_can_prune(digits: Digits) -> None:
    r = digits.run(request(target=Target("error", 0.0, "minimize")), lambda s, m: s >= 20)
    assert r.pruned and r.stopped_at_step == 20 and not r.reached


def test_maximised_metric(digits: Digits) -> None:
    r = digits.run(request(target=Target("accuracy", 0.9, "maximize")), never)
    assert r.reached and r.curve[-1][1]["accuracy"] >= 0.9


def test_batch_larger_than_training_set_wraps_epochs(digits: Digits) -> None:
    big = digits.num_train_examples() + 100
    r = digits.run(request(batch_size=big, max_steps=20, eval_steps=(10, 20),
                           target=Target("error", 0.0, "minimize")), never)
    assert r.stopped_at_step == 20 and r.examples_seen == 20 * big


def raw_order(n: int, seed: int, epochs: int) -> torch.Tensor:
    """The example order our loop uses: seeded permutations, one per epoch, back to back."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])


@pytest.mark.parametrize("schedule", ["constant", "linear_decay"])
def test_matches_a_raw_pytorch_loop(digits: Digits, schedule: str) -> None:
    """Our Fabric loop computes what a hand-written PyTorch loop computes, to float tolerance:
    the validation loss and error after every step (epochs wrap mid-batch at B = 100)."""
    import torch
    import torch.nn.functional as F

    steps, b = 60, 100
    params = {"learning_rate": 0.1, "one_minus_momentum": 0.1, "weight_decay": 0.0,
              "end_factor": 0.05, "decay_fraction": 0.5}
    req = request(target=Target("error", 0.0, "minimize"), max_steps=steps, batch_size=b,
                  eval_steps=tuple(range(1, steps + 1)), schedule=schedule, params=params)
    ours = digits.run(req, never)

    torch.manual_seed(req.seed)
    model = digits.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.05, total_iters=30)
    data = digits.data()
    order = raw_order(len(data.train_x), req.seed, 10)
    curve = []
    for step in range(1, steps + 1):
        idx = order[(step - 1) * b:step * b]
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if schedule == "linear_decay":
            sched.step()
        with torch.no_grad():
            logits = model(data.val_x)
            curve.append((step, F.cross_entropy(logits, data.val_y).item(),
                          (logits.argmax(1) != data.val_y).float().mean().item()))
    assert len(ours.curve) == len(curve) == steps
    for (s, m), (rs, rloss, rerr) in zip(ours.curve, curve):
        assert s == rs
        assert m["loss"] == pytest.approx(rloss, rel=1e-5)
        assert m["error"] == pytest.approx(rerr, abs=1e-6)


@pytest.mark.parametrize("lr, one_minus_momentum", [(0.5, 0.003), (4.0, 0.003), (1e8, 0.1)])
def test_divergence_stops_at_the_step_a_per_step_check_finds(
        digits: Digits, lr: float, one_minus_momentum: float) -> None:
    """The loop reads the losses every CHECK_EVERY steps; the step it reports as stopped at is the
    first whose loss a raw loop checking every step finds non-finite or > factor x the first."""
    import math

    import torch
    import torch.nn.functional as F

    from tuner.train.loop import CHECK_EVERY

    factor = 3.0
    params = {"learning_rate": lr, "one_minus_momentum": one_minus_momentum, "weight_decay": 0.0}
    req = request(params=params, divergence_factor=factor, eval_steps=(150, 300),
                  target=Target("error", 0.0, "minimize"))
    ours = digits.run(req, never)

    torch.manual_seed(req.seed)
    model = digits.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=1 - one_minus_momentum)
    data = digits.data()
    order = raw_order(len(data.train_x), req.seed, 10)
    first = stop = None
    for step in range(req.max_steps):
        idx = order[step * 32:(step + 1) * 32]
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        first = loss.item() if first is None else first
        if not math.isfinite(loss.item()) or loss.item() > factor * first:
            stop = step
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stop is not None and ours.diverged and not ours.reached
    assert ours.stopped_at_step == stop and ours.examples_seen == 32 * stop
    assert ours.curve == []  # the first evaluation (step 150) comes after the divergence
    if lr < 1e3:
        assert stop > CHECK_EVERY  # found in a later check than the first
