"""The Lightning callbacks a LightningModule's branches use (tuner/train/branching.py):
Snapshot keeps the module's and optimizer's state, Restore starts a branch from it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tuner.core.errors import UsageError
from tuner.train.branching import Restore, Snapshot


def _trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    return m, opt


def test_restore_loads_weights_and_momentum_and_scales_the_learning_rate() -> None:
    m, opt = _trained(0)
    snap = Snapshot([5])
    snap.on_train_batch_start(SimpleNamespace(global_step=5, optimizers=[opt]), m, None, 0)
    assert snap.learning_rate(5) == 0.1
    m2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    Restore(snap.kept[5], 4.0).on_train_start(SimpleNamespace(optimizers=[opt2]), m2)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(opt.state[a]["momentum_buffer"], opt2.state[b]["momentum_buffer"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.4)
    # the branch trains on a copy: the snapshot's buffers stay as they were
    kept = snap.kept[5][1][0]["state"][0]["momentum_buffer"].clone()
    opt2.zero_grad()
    m2(torch.randn(8, 4)).square().mean().backward()
    opt2.step()
    assert torch.equal(snap.kept[5][1][0]["state"][0]["momentum_buffer"], kept)


def test_snapshot_refuses_a_module_scheduler() -> None:
    with pytest.raises(UsageError, match="learning-rate scheduler"):
        Snapshot([0]).on_train_start(SimpleNamespace(lr_scheduler_configs=[object()]),
                                     torch.nn.Linear(1, 1))
    Snapshot([0]).on_train_start(SimpleNamespace(lr_scheduler_configs=[]), torch.nn.Linear(1, 1))
