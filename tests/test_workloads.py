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


class TinyNet(L.LightningModule):
    def __init__(self, width):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.Tanh(),
                                       torch.nn.Linear(width, 10))
        self.steps_seen = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)  # harmless outside a Trainer
        self.steps_seen += 1
        return {"loss": loss}


@dataclass
class TinyOptions:
    width: int = 16


class MyDigits(TrainedWorkload):
    name = "my_digits"
    Options = TinyOptions

    def num_train_examples(self):
        return Digits().num_train_examples()

    def load_data(self):
        return Digits().load_data()

    def build_model(self):
        return TinyNet(self.options.width)
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
    assert s.user_attrs["workload_options"] == {"width": 24}
    trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
    assert any(t.user_attrs["reached"] for t in trials)
    # an option the plug-in does not declare is a spec error naming it
    bad = write(tmp_path, text.replace("width = 24", "depth = 2"), "bad.toml")
    code, _, err = run_cli(["run", str(bad), "--storage", url], capsys)
    assert code == 2 and "workload.depth: unknown key; allowed: name, width" in err


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
