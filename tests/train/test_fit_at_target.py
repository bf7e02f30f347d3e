"""tuner.train.fit_at_target: what ``tuner confirm`` records where a LightningModule trial
reached its target (user code from tests/mylab, real fits on scikit-learn's digits)."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from mylab.data import DigitsDataModule, DigitsTestSplitDataModule
from mylab.models import LitClassifier, ManualClassifier
from torch.utils.data import DataLoader, TensorDataset

from tuner.core.trial import Target, TrialRequest
from tuner.train.fit import fit_trial
from tuner.train.fit_at_target import (
    MANUAL,
    fixed_batches,
    in_order,
    measure,
    module_loss,
    validation_name,
)


def test_fixed_batches_are_the_same_examples_and_leave_the_rng_alone() -> None:
    data = TensorDataset(torch.arange(200.0).reshape(-1, 1), torch.arange(200))
    loader = DataLoader(data, batch_size=16, shuffle=True)
    torch.manual_seed(3)
    first = fixed_batches(loader, examples=50)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after)  # the caller's stream as if nothing ran
    assert [len(b[0]) for b in first] == [16, 16, 16, 2]
    again = fixed_batches(loader, examples=50)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not torch.equal(torch.cat([b[1] for b in first]), torch.arange(50))  # shuffled


def test_the_subset_is_the_first_examples_in_the_datasets_order() -> None:
    """Whatever the training loader shuffles (or how many workers it has), the subset is the
    dataset's first examples, read in this process with the loader's batch size."""
    data = TensorDataset(torch.arange(200.0).reshape(-1, 1), torch.arange(200))
    loader = DataLoader(data, batch_size=16, shuffle=True, num_workers=2)
    batches = fixed_batches(in_order(loader), examples=40)
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(40))
    assert [len(b[1]) for b in batches] == [16, 16, 8]
    several = {"a": loader}
    assert in_order(several) is several
    # a batch sampler of the user's is kept; a dataset of whole batches is read as it comes
    own = DataLoader(data, batch_sampler=[[5, 6, 7], [1, 2]])
    assert [b[1].tolist() for b in in_order(own)] == [[5, 6, 7], [1, 2]]
    whole = DataLoader(TensorDataset(torch.zeros(4, 8, 1), torch.zeros(4, 8)), batch_size=None)
    assert [len(b[1]) for b in fixed_batches(in_order(whole), examples=20)] == [8, 8, 4]


def test_module_loss_is_the_mean_over_every_example() -> None:
    torch.manual_seed(0)
    module = LitClassifier(hidden=16)
    module.log = lambda *a, **kw: None  # type: ignore[method-assign]
    x, y = torch.rand(50, 64), torch.randint(0, 10, (50,))
    batches = [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]
    want = F.cross_entropy(module(x), y)
    got = module_loss(module, batches).detach()
    assert float(got) == pytest.approx(float(want.detach()), rel=1e-6)


class Probe(L.Callback):
    """Calls :func:`measure` at the last training batch and keeps what it returned and the
    module's state around it."""

    def __init__(self, step: int) -> None:
        self.step, self.got = step, {}

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *a: Any
                           ) -> None:
        if trainer.global_step != self.step:
            return
        before = {k: v.clone() for k, v in module.state_dict().items()}
        self.got = measure(trainer, module, self.step, seed=0, landscape=True)
        after = module.state_dict()
        self.got["unchanged"] = all(torch.equal(before[k], after[k]) for k in before)
        self.got["training"] = module.training
        self.got["grads"] = [p.grad for p in module.parameters() if p.grad is not None]


def request(measure_it: bool, target: float, to_budget: bool = False) -> TrialRequest:
    return TrialRequest(params={"learning_rate": 0.1, "one_minus_momentum": 0.1,
                                "weight_decay": 0.0}, optimizer="momentum",
                        schedule="constant", batch_size=32, max_steps=40, eval_steps=(20, 40),
                        target=Target("val_acc", target, "maximize"), seed=0,
                        accelerator="cpu", measure=measure_it, train_to_budget=to_budget)


def test_measure_in_a_fit_leaves_the_module_as_it_was() -> None:
    torch.manual_seed(0)
    probe = Probe(step=10)
    module = LitClassifier(hidden=16, dropout=0.2)
    fit_trial(module, DigitsDataModule(batch_size=32), request(False, 2.0),
              lambda s, m: False, per_device_batch=32, callbacks=(probe,))
    got = probe.got
    assert got["sharpness"] > 0 and got["sharpness_examples"] == 1024
    assert 1 <= got["sharpness_iterations"] <= 30
    assert len(got["landscape"]["loss_1d"]) == 21
    assert got["unchanged"] and got["training"] and got["grads"] == []


def test_a_fit_records_test_metrics_at_the_target_and_manual_optimization_says_why() -> None:
    torch.manual_seed(0)
    r = fit_trial(LitClassifier(hidden=16), DigitsTestSplitDataModule(batch_size=32),
                  request(True, 0.5), lambda s, m: False, per_device_batch=32)
    assert r.reached and r.steps_to_target == 20
    a = r.at_target
    assert a is not None and a["step"] == 20 and a["sharpness"] > 0
    assert set(a["test"]) == {"val_acc", "val_loss"} and 0 <= a["test"]["val_acc"] <= 1
    # trained on to the budget (step 40), the same trial is tested on its weights at step 20
    torch.manual_seed(0)
    on = fit_trial(LitClassifier(hidden=16), DigitsTestSplitDataModule(batch_size=32),
                   request(True, 0.5, to_budget=True), lambda s, m: False, per_device_batch=32)
    assert on.stopped_at_step == 40 and on.at_target is not None
    assert on.at_target["test"] == a["test"] and on.at_target["sharpness"] == a["sharpness"]
    # a trial with no test split records none
    torch.manual_seed(0)
    r = fit_trial(LitClassifier(hidden=16), DigitsDataModule(batch_size=32),
                  request(True, 0.5), lambda s, m: False, per_device_batch=32)
    assert r.at_target is not None and r.at_target["test"] is None
    torch.manual_seed(0)
    r = fit_trial(ManualClassifier(hidden=16), DigitsTestSplitDataModule(batch_size=32),
                  request(True, 0.5), lambda s, m: False, per_device_batch=32,
                  module_optimizers=True)
    assert r.reached and r.at_target is not None
    assert r.at_target["sharpness"] is None and r.at_target["sharpness_not_measured"] == MANUAL
    assert r.at_target["test"] is not None  # the test pass needs no training loss


class BrokenTest(LitClassifier):
    """A test_step that fails."""

    def test_step(self, batch: Any, batch_idx: int) -> None:
        raise ValueError("no test today")


class TrainModeOnly(LitClassifier):
    """A training_step that refuses to run in eval mode."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if not self.training:
            raise RuntimeError("training_step in eval mode")
        return super().training_step(batch, batch_idx)


def test_what_fails_in_the_users_code_is_recorded_and_the_trial_stands() -> None:
    torch.manual_seed(0)
    r = fit_trial(BrokenTest(hidden=16), DigitsTestSplitDataModule(batch_size=32),
                  request(True, 0.5), lambda s, m: False, per_device_batch=32)
    assert r.reached and r.at_target is not None and r.at_target["sharpness"] > 0
    assert r.at_target["test"] is None
    assert r.at_target["test_not_measured"] == "ValueError: no test today"
    torch.manual_seed(0)
    r = fit_trial(TrainModeOnly(hidden=16), DigitsTestSplitDataModule(batch_size=32),
                  request(True, 0.5), lambda s, m: False, per_device_batch=32)
    assert r.reached and r.at_target is not None and r.at_target["sharpness"] is None
    assert r.at_target["sharpness_not_measured"] == "RuntimeError: training_step in eval mode"
    assert set(r.at_target["test"]) == {"val_acc", "val_loss"}


def test_validation_names() -> None:
    assert [validation_name(n) for n in ("test_acc", "test/loss", "accuracy")] == [
        "val_acc", "val/loss", "accuracy"]
