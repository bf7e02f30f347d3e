"""The workload registry and plugging in a user's own LightningModule."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

import workloads
from tuner.workload import registry
from conftest import SMALL_DIGITS, run_cli, write
from tuner.workload import TrainedWorkload
from workloads.digits import Digits

PLUGIN = '''
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F

from tuner.workload import TrainedWorkload
from workloads.digits import Digits

#: batch_idx of every training_step call, in order (a trial's calls count 0, 1, 2, ...)
CALLS = []


class TinyNet(L.LightningModule):
    def __init__(self, width, loss_scale=1.0):
        super().__init__()
        self.loss_scale = loss_scale
        self.net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, 10))
        self.steps_seen = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        # scaled: with loss_scale = 0 nothing is learnt, which plain cross-entropy would not do
        loss = self.loss_scale * F.cross_entropy(self(x), y)
        self.log("train_loss", loss)  # harmless outside a Trainer
        self.steps_seen += 1
        CALLS.append(batch_idx)  # every call, seen by the test (tuner runs in this process)
        return {"loss": loss}


@dataclass
class TinyOptions:
    width: int = 16
    loss_scale: float = 1.0


class MyDigits(TrainedWorkload):
    name = "my_digits"
    Options = TinyOptions

    def num_train_examples(self):
        return Digits().num_train_examples()

    def load_data(self):
        return Digits().load_data()

    def build_model(self):
        return TinyNet(self.options.width, self.options.loss_scale)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_plugin:MyDigits"
    sys.modules.pop("my_plugin", None)


def test_builtin_names() -> None:
    assert {"digits", "fashion_mnist"} <= set(workloads.names())
    assert workloads.get("digits") is Digits


def test_unknown_and_non_workload_paths_are_refused() -> None:
    with pytest.raises(KeyError, match="allowed: digits"):
        workloads.get("nope")
    with pytest.raises(KeyError, match="not a tuner.workload.Workload"):
        workloads.get("pathlib:Path")


def trial_calls(calls: list[int]) -> list[int]:
    """training_step calls per trial, from the batch_idx of every call (each trial counts from 0)."""
    assert calls and calls[0] == 0
    runs: list[int] = []
    for i in calls:
        if i == 0:
            runs.append(0)
        assert i == runs[-1], calls  # consecutive steps within a trial
        runs[-1] += 1
    return runs


def test_user_lightning_module_runs_through_tuner_run(
    plugin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SMALL_DIGITS.replace('name = "digits"\nhidden = [32]', f'name = "{plugin}"\nwidth = 24')
    spec = write(tmp_path, text, "mine.toml")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    code, out, err = run_cli(["run", str(spec), "--storage", url, "-n", "3", "-b", "128"], capsys)
    assert code == 0, err
    [s] = optuna.get_all_study_summaries(url)
    assert s.user_attrs["workload"] == plugin
    assert s.user_attrs["workload_options"] == {"width": 24, "loss_scale": 1.0}
    trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
    assert any(t.user_attrs["reached"] for t in trials)
    # the module's own training_step trained every step of every trial
    calls = sys.modules["my_plugin"].CALLS
    preflight, *per_trial = trial_calls(calls)
    assert preflight == 1  # the pre-flight's one training step, before any storage
    assert len(per_trial) == len(trials) == 3
    for n, t in zip(per_trial, sorted(trials, key=lambda t: t.number)):
        steps = t.user_attrs["stopped_at_step"]
        # a diverged trial stops at the step whose loss was bad: a few more calls ran
        assert n == steps if not t.user_attrs["diverged"] else n >= steps, (n, t.user_attrs)
    # and its loss is what is minimised: scaled to 0, nothing is learnt and no trial reaches
    calls.clear()
    zero = write(tmp_path, text.replace("width = 24", "width = 24\nloss_scale = 0.0"), "zero.toml")
    zurl = f"sqlite:///{tmp_path / 'z.db'}"
    code, _, err = run_cli(["run", str(zero), "--storage", zurl, "-n", "3", "-b", "128"], capsys)
    assert code == 0, err
    [z] = optuna.get_all_study_summaries(zurl)
    ztrials = optuna.load_study(study_name=z.study_name, storage=zurl).get_trials()
    assert len(ztrials) == 3 and not any(t.user_attrs["reached"] for t in ztrials)
    assert sum(trial_calls(calls)) - 1 == sum(t.user_attrs["stopped_at_step"]
                                              for t in ztrials) > 0
    # an option the plug-in does not declare is a spec error naming it
    bad = write(tmp_path, text.replace("width = 24", "depth = 2"), "bad.toml")
    code, _, err = run_cli(["run", str(bad), "--storage", url], capsys)
    assert code == 2 and "workload.depth: unknown key; allowed: name, width, loss_scale" in err


def test_register_makes_a_name(plugin: str) -> None:
    cls = workloads.get(plugin)
    assert issubclass(cls, TrainedWorkload)
    workloads.register(cls)
    assert workloads.get("my_digits") is cls
    registry._REGISTERED.pop("my_digits")


def test_a_trained_plugin_counts_its_validation_examples(plugin: str) -> None:
    """``[eval] max_share`` needs the validation size: a plugin gets it from its data."""
    import importlib

    module, cls = plugin.split(":")
    wl = getattr(importlib.import_module(module), cls)()
    assert wl.num_val_examples() == len(wl.data().val_y) == Digits().num_val_examples() > 0
