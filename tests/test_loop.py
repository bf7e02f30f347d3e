"""The training loop on real digits data: stopping rule, divergence, pruning, reproducibility."""

from __future__ import annotations

import dataclasses

import pytest

from tuner.cadence import eval_steps
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


def test_matches_a_raw_pytorch_loop(digits: Digits) -> None:
    """Our Fabric loop computes what a hand-written PyTorch loop computes, to float tolerance."""
    import torch
    import torch.nn.functional as F

    req = request(target=Target("error", 0.0, "minimize"), max_steps=60,
                  eval_steps=(20, 40, 60), batch_size=100)
    ours = digits.run(req, never)

    torch.manual_seed(req.seed)
    model = digits.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = digits.data()
    n = len(data.train_x)
    gen = torch.Generator().manual_seed(req.seed)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(10)])
    curve = []
    for step in range(1, 61):
        idx = order[(step - 1) * 100:step * 100]
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in req.eval_steps:
            with torch.no_grad():
                logits = model(data.val_x)
                curve.append((step, F.cross_entropy(logits, data.val_y).item(),
                              (logits.argmax(1) != data.val_y).float().mean().item()))
    for (s, m), (rs, rloss, rerr) in zip(ours.curve, curve):
        assert s == rs
        assert m["loss"] == pytest.approx(rloss, rel=1e-5)
        assert m["error"] == pytest.approx(rerr, abs=1e-6)
