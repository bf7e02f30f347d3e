"""The two Lightning workloads (char-level LM, augmented ResNet-8) give a scaling curve through
``tuner run`` + ``tuner curve`` at tiny sizes on the CPU (the shipped specs are hours here)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from conftest import run_cli, write

CHARLM = """\
batch_sizes = [8, 32]
trials = 2
[workload]
module = "workloads.charlm:CharTransformer"
datamodule = "workloads.charlm:CharDataModule"
module_args = { n_layer = 1, n_head = 2, n_embd = 32, context = 32 }
datamodule_args = { context = 32, block = 1024, max_chars = 200000, eval_batch_size = 512 }
[optimizer]
name = "adam"
[search_space]
learning_rate = { low = 3e-3, high = 3e-2, log = true }
[target]
metric = "val_bpc"
value = 4.0
direction = "minimize"
[budget]
max_steps = 150
[eval]
first_step = 10
relative = 0.1
min_interval = 10
"""

RESNET = """\
batch_sizes = [16, 64]
trials = 2
[workload]
module = "workloads.resnet:ResNet8"
datamodule = "workloads.resnet:ImageDataModule"
module_args = { in_channels = 1, width = 4, ghost_batch_size = 8 }
datamodule_args = { train_size = 2000, val_size = 500 }
[optimizer]
name = "momentum"
[search_space]
learning_rate = { low = 0.02, high = 0.2, log = true }
one_minus_momentum = { low = 0.05, high = 0.2, log = true }
[target]
metric = "val_acc"
value = 0.35
direction = "maximize"
[budget]
max_steps = 150
[eval]
first_step = 10
relative = 0.1
min_interval = 10
"""


@pytest.mark.parametrize(("text", "metrics"), [(CHARLM, {"val_bpc", "val_loss"}),
                                                (RESNET, {"val_acc", "val_loss"})],
                         ids=["charlm", "resnet8"])
def test_a_small_scaling_curve(text: str, metrics: set[str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, text)
    url = f"sqlite:///{tmp_path / 't.db'}"
    code, out, err = run_cli(["run", str(spec), "--storage", url], capsys)
    assert code == 0, err
    code, out, err = run_cli(["curve", str(spec), "--storage", url, "--format", "json"], capsys)
    assert code == 0, err
    points = json.loads(out)["points"]
    assert [p["batch_size"] for p in points] == sorted(p["batch_size"] for p in points)
    assert all(p["n_trials"] == 2 for p in points)
    assert all(p["best_steps"] is not None for p in points), points
    for name in optuna.get_all_study_names(url):
        for t in optuna.load_study(study_name=name, storage=url).trials:
            assert set(t.user_attrs["curve"]["metrics"]) == metrics
