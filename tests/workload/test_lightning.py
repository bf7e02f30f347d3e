"""A researcher's LightningModule + LightningDataModule, unchanged, through ``tuner``.

The user code is ``tests/mylab`` (written as Lightning's docs write it, no tuner imports); every
test trains for real on scikit-learn's digits or diabetes data, on real SQLite storage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import run_cli, write

LIT = """\
batch_sizes = [16, 64]
trials = {trials}

[workload]
module = "mylab.models:{module}"
datamodule = "mylab.data:{datamodule}"
module_args = {{ hidden = 32 }}
{workload_extra}

[optimizer]
{optimizer}

[search_space]
{space}

[target]
metric = "{metric}"
value = {value}
direction = "{direction}"

[budget]
max_steps = {max_steps}

[eval]
first_step = 5
relative = 0.05
min_interval = 5
"""

MOMENTUM = 'name = "momentum"'
MOMENTUM_SPACE = """\
learning_rate = { low = 0.03, high = 0.5, log = true }
one_minus_momentum = { low = 0.05, high = 0.5, log = true }
"module.dropout" = { low = 0.0, high = 0.3 }"""


def lit_spec(tmp_path: Path, **kw: object) -> Path:
    """A small digits spec over the user's classes (keywords override the defaults)."""
    values = dict(trials=2, module="LitClassifier", datamodule="DigitsDataModule",
                  workload_extra="", optimizer=MOMENTUM, space=MOMENTUM_SPACE,
                  metric="val_acc", value=0.85, direction="maximize", max_steps=200)
    values.update(kw)
    return write(tmp_path, LIT.format(**values))


def trials_of(db: Path) -> list[optuna.trial.FrozenTrial]:
    """Every stored trial of every study in ``db``."""
    url = f"sqlite:///{db}"
    out: list[optuna.trial.FrozenTrial] = []
    for name in sorted(optuna.get_all_study_names(url)):
        out += optuna.load_study(study_name=name, storage=url).trials
    return out


def test_docs_style_module_runs_through_every_command(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """run, curve, edges, sensitivity and report on a docs-style module with target val_acc,
    a searched ``module.dropout``; hooks called, global_step advanced, logged metrics stored."""
    from mylab.models import CALLS

    CALLS.clear()
    spec = lit_spec(tmp_path, module="ProbedClassifier", trials=3)
    db = tmp_path / "t.db"
    url = f"sqlite:///{db}"
    code, out, err = run_cli(["run", str(spec), "--storage", url], capsys)
    assert code == 0, err
    assert "pre-flight" in err and "val_acc" in err
    trials = trials_of(db)
    assert len(trials) == 6
    assert all(t.state != optuna.trial.TrialState.FAIL for t in trials)
    reached = [t for t in trials if t.user_attrs.get("reached")]
    assert reached, "no trial reached val_acc >= 0.85"
    for t in trials:
        c = t.user_attrs["curve"]
        assert {"val_acc", "val_loss", "global_step", "epoch", "max_steps"} <= set(c["metrics"])
        # the module saw Lightning's global step at each evaluation step, and the budget
        assert c["metrics"]["global_step"] == [float(s) for s in c["steps"]]
        assert set(c["metrics"]["max_steps"]) == {200.0}
        assert "module.dropout" in t.params
    hooks = {name for name, _ in CALLS}
    assert {"on_train_start", "validation_step"} <= hooks
    assert "configure_optimizers" not in hooks  # the spec's momentum replaces it
    assert max(step for name, step in CALLS if name == "validation_step") >= 5

    for cmd in (["curve", "--format", "json"], ["edges"], ["sensitivity"]):
        code, out, err = run_cli([*cmd, str(spec), "--storage", url], capsys)
        assert code in (0, 1, 3), (cmd, err)  # edges: 1 at an edge, 3 under-tuned
        if cmd[0] == "curve":
            points = json.loads(out)["points"]
            assert [p["batch_size"] for p in points] == [16, 64]
            assert any(p["best_steps"] for p in points)
    code, out, err = run_cli(["report", str(spec), "--storage", url, "--out",
                              str(tmp_path / "report"), "--no-dashboard"], capsys)
    assert code == 0, err
    assert (tmp_path / "report" / "index.html").exists()
    code, out, err = run_cli(["curve", str(spec), "--storage", url, "--target",
                              "val_loss<=0.5"], capsys)
    assert code == 0, err  # every logged metric is stored: re-scoring at another one works


def test_module_mode_calls_configure_optimizers(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``[optimizer] name = "module"``: the module's own optimizer, searched ``module.*``
    constructor arguments reach it (``self.hparams.lr``)."""
    from mylab.models import CALLS

    CALLS.clear()
    spec = lit_spec(tmp_path, module="ProbedClassifier", optimizer='name = "module"',
                    space='"module.lr" = { low = 0.05, high = 0.5, log = true }\n'
                          '"module.dropout" = { low = 0.0, high = 0.3 }')
    db = tmp_path / "t.db"
    code, out, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{db}", "-b", "64"],
                             capsys)
    assert code == 0, err
    assert ("configure_optimizers", 0) in CALLS
    trials = trials_of(db)
    assert len(trials) == 2 and all(set(t.params) == {"module.lr", "module.dropout"}
                                    for t in trials)
    assert any(t.user_attrs["reached"] for t in trials)


@pytest.mark.parametrize(("module", "datamodule", "metric", "value", "direction"), [
    ("NoForward", "DigitsDataModule", "val_error", 0.2, "minimize"),
    ("MetricsClassifier", "DigitsDataModule", "val_acc", 0.8, "maximize"),
    ("ManualClassifier", "DigitsDataModule", "val_acc", 0.8, "maximize"),
    ("DictClassifier", "DictDigitsDataModule", "val_acc", 0.8, "maximize"),
    ("LitClassifier", "StreamingDigitsDataModule", "val_acc", 0.8, "maximize"),
    ("LitRegressor", "DiabetesDataModule", "val_mse", 0.7, "minimize"),
])
def test_module_kinds_reach_their_target(module: str, datamodule: str, metric: str, value: float,
                                         direction: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """No forward(), torchmetrics, manual optimization, dict batches, an IterableDataset and a
    regression: each trains and reaches a real target."""
    args = "" if module != "LitRegressor" else "module_args = { hidden = 32 }"
    text = LIT.format(trials=2, module=module, datamodule=datamodule, workload_extra="",
                      optimizer=MOMENTUM if module != "LitRegressor" else 'name = "adam"',
                      space=("learning_rate = { low = 0.05, high = 0.3, log = true }\n"
                             "one_minus_momentum = { low = 0.05, high = 0.2, log = true }"
                             if module != "LitRegressor" else
                             "learning_rate = { low = 0.003, high = 0.03, log = true }"),
                      metric=metric, value=value, direction=direction, max_steps=300)
    if module in ("NoForward", "LitRegressor"):
        text = text.replace("module_args = { hidden = 32 }", args)
    spec = write(tmp_path, text)
    db = tmp_path / "t.db"
    code, out, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{db}", "-b", "64"],
                             capsys)
    assert code == 0, err
    trials = trials_of(db)
    assert len(trials) == 2
    assert all(t.state != optuna.trial.TrialState.FAIL for t in trials), [
        t.system_attrs.get("fail_reason") for t in trials]
    assert any(t.user_attrs["reached"] for t in trials), [t.user_attrs["best_metric"]
                                                          for t in trials]
    assert all(metric in t.user_attrs["curve"]["metrics"] for t in trials)


def test_every_batch_holds_b_examples_across_epochs(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """B = 100 does not divide the 1437 training digits: the partial last batch of each epoch
    is dropped (a partial batch would fail the trial), and epochs wrap."""
    spec = lit_spec(tmp_path, module="ProbedClassifier", value=0.999, max_steps=40,
                    trials=1).read_text().replace("[16, 64]", "[100]")
    db = tmp_path / "t.db"
    code, out, err = run_cli(["run", str(write(tmp_path, spec)), "--storage",
                              f"sqlite:///{db}"], capsys)
    assert code == 0, err
    (t,) = trials_of(db)
    assert t.state == optuna.trial.TrialState.COMPLETE, t.system_attrs
    assert t.user_attrs["stopped_at_step"] == 40 and t.user_attrs["examples_seen"] == 4000
    assert max(t.user_attrs["curve"]["metrics"]["epoch"]) >= 2.0  # 14 batches an epoch
    assert t.user_attrs["curve"]["steps"][-1] == 40  # the last evaluation is at the budget


@pytest.mark.parametrize("workers", [0, 2])
def test_a_trial_is_reproducible_from_its_seed(workers: int, tmp_path: Path) -> None:
    """The same request twice: the same curve, to float tolerance (with DataLoader worker
    processes too: the loader the tool rebuilds with drop_last keeps them)."""
    from tuner.run.specs import load, probe_request

    spec = load(lit_spec(tmp_path, workload_extra=f"datamodule_args = {{ num_workers = {workers} }}"))
    req = probe_request(spec, 16)
    req = dataclasses.replace(req, max_steps=60, eval_steps=(20, 40, 60))
    w = spec.bound()
    a = w.run(req, lambda s, m: False)
    b = w.run(req, lambda s, m: False)
    assert [s for s, _ in a.curve] == [20, 40, 60]
    assert all(sa == sb and ma == pytest.approx(mb)
               for (sa, ma), (sb, mb) in zip(a.curve, b.curve, strict=True))
    c = w.run(dataclasses.replace(req, seed=req.seed + 1), lambda s, m: False)
    assert c.curve[-1][1]["val_loss"] != a.curve[-1][1]["val_loss"]


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"module": "Nope"}, "workload.module", "has no attribute 'Nope'"),
    ({"datamodule": "Nope"}, "workload.datamodule", "has no attribute 'Nope'"),
    ({"module": "CALLS"}, "workload.module", "not a LightningModule"),
    ({"workload_extra": "module_args = { width = 3 }"}, "workload", "module_args"),
    ({"module": "BrokenStep"}, "workload.module", "the training step failed: RuntimeError"),
    ({"datamodule": "FixedBatchDigits"}, "workload.batch_size_arg", "50 examples"),
    ({"metric": "val_accuracy"}, "target.metric", "logged: val_acc, val_loss"),
    ({"space": MOMENTUM_SPACE + '\n"module.width" = { low = 1, high = 4 }'},
     "search_space.module.width",
     "takes no argument"),
    ({"module": "ManualClassifier", "optimizer": 'name = "momentum"\nschedule = "linear_decay"'
      "\nend_factor = 0.1", "space": "learning_rate = { low = 0.01, high = 0.1 }\n"
      "one_minus_momentum = { low = 0.05, high = 0.2 }"}, "optimizer.schedule",
     "manual optimization"),
    ({"optimizer": 'name = "module"\nschedule = "linear_decay"'}, "optimizer.schedule",
     "configure_optimizers"),
])
def test_preflight_failures_are_one_line_exit_2_no_storage(
        change: dict[str, str], key: str, words: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Every kind of broken user code or spec: one line naming the key, exit 2, no storage."""
    spec = lit_spec(tmp_path, **change)
    if change.get("workload_extra"):  # module_args given twice: replace the default line
        text = spec.read_text().replace("module_args = { hidden = 32 }\n", "", 1)
        spec.write_text(text)
    db = tmp_path / "t.db"
    code, out, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{db}"], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert key in lines[0] and words in lines[0], lines[0]
    assert not db.exists()


def test_a_regression_through_the_tensor_path_is_refused(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """A plain workload with float labels and the default cross-entropy loss: one line, exit 2
    (it used to "run" with loss -0. and miss every trial)."""
    plugin = tmp_path / "floaty.py"
    plugin.write_text(
        "import torch\n"
        "from tuner.workload import Data, TrainedWorkload\n"
        "class Floaty(TrainedWorkload):\n"
        "    name = 'floaty'\n"
        "    def num_train_examples(self): return 64\n"
        "    def load_data(self):\n"
        "        x = torch.randn(80, 4)\n"
        "        return Data(x[:64], x[:64, 0], x[64:], x[64:, 0])\n"
        "    def build_model(self): return torch.nn.Linear(4, 1)\n")
    text = (LIT.replace('module = "mylab.models:{module}"\ndatamodule = "mylab.data:'
                        '{datamodule}"\nmodule_args = {{ hidden = 32 }}\n{workload_extra}',
                        'name = "floaty:Floaty"')
            .format(trials=1, optimizer=MOMENTUM, space=MOMENTUM_SPACE.rsplit("\n", 1)[0],
                    metric="loss", value=0.1, direction="minimize", max_steps=50))
    sys.path.insert(0, str(tmp_path))
    try:
        db = tmp_path / "t.db"
        code, out, err = run_cli(["run", str(write(tmp_path, text)), "--storage",
                                  f"sqlite:///{db}"], capsys)
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 2, err
    assert "workload.name" in err and "cross-entropy" in err and len(err.strip().splitlines()) == 1
    assert not db.exists()


def test_spec_callbacks_clipping_and_precision_reach_the_trainer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``callbacks``, ``gradient_clip_val`` and ``[trainer] precision`` are the Trainer's."""
    from mylab.callbacks import SEEN

    SEEN.clear()
    spec = lit_spec(tmp_path, workload_extra='callbacks = ["mylab.callbacks:Recorder"]\n'
                    "gradient_clip_val = 0.5", max_steps=20, trials=1)
    spec.write_text(spec.read_text() + '\n[trainer]\nprecision = "64-true"\n')
    db = tmp_path / "t.db"
    code, out, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{db}", "-b", "16"],
                             capsys)
    assert code == 0, err
    assert ("on_train_start", 0.5, "64-true", "torch.float64") in SEEN
    assert sum(hook == "on_validation_end" for hook, *_ in SEEN) >= 2  # pre-flight + the trial
    (t,) = trials_of(db)
    assert t.state == optuna.trial.TrialState.COMPLETE


def test_a_package_in_the_current_folder_runs_with_workers(tmp_path: Path) -> None:
    """``tuner run`` from the folder that holds the user's package, as a user runs it (no
    PYTHONPATH, not installed), with two worker processes: each imports it."""
    shutil.copytree(Path(__file__).parents[1] / "mylab", tmp_path / "mylab")
    lit_spec(tmp_path, trials=2)
    tuner = Path(sys.executable).parent / "tuner"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([str(tuner), "run", "spec.toml", "--storage", "sqlite:///t.db", "-b", "16",
                        "--workers", "2", "-q"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    trials = trials_of(tmp_path / "t.db")
    assert len(trials) == 2 and len({t.user_attrs["worker"] for t in trials}) >= 1
    assert all(t.state != optuna.trial.TrialState.FAIL for t in trials)


def test_a_diverging_module_trial_is_recorded_as_diverged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A learning rate far too large: the training loss explodes, the trial stops at that step
    and is stored COMPLETE with diverged = True (not FAIL, not missed)."""
    spec = lit_spec(tmp_path, trials=1, max_steps=200,
                    space="learning_rate = { low = 1e4, high = 1e5, log = true }\n"
                          "one_minus_momentum = { low = 0.05, high = 0.5, log = true }")
    db = tmp_path / "t.db"
    code, out, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{db}", "-b", "16"],
                             capsys)
    assert code == 0, err
    (t,) = trials_of(db)
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert t.user_attrs["diverged"] and t.user_attrs["outcome"] == "diverged"
    assert t.user_attrs["stopped_at_step"] < 200


def test_a_lightning_module_named_as_a_workload_says_how_to_name_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``name = "mylab.models:LitClassifier"`` (the old way) points to ``module = ...``."""
    text = lit_spec(tmp_path).read_text().replace('module = "mylab.models:LitClassifier"',
                                                  'name = "mylab.models:LitClassifier"')
    code, out, err = run_cli(["run", str(write(tmp_path, text)), "--storage",
                              f"sqlite:///{tmp_path / 't.db'}"], capsys)
    assert code == 2 and "is a LightningModule" in err and "module = " in err, err


def test_ddp_inside_a_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``[trainer] devices = 2`` on the CPU (gloo): two rank processes, each a batch of B / 2,
    rank 0 reports; the trial is stored once, reaches the target, and the module saw the
    global step (the same on both ranks: a step is one global batch)."""
    spec = lit_spec(tmp_path, module="ProbedClassifier", trials=1, value=0.8, max_steps=150)
    text = spec.read_text().replace("[16, 64]", "[32]")
    spec.write_text(text + '\n[trainer]\naccelerator = "cpu"\ndevices = 2\n')
    db = tmp_path / "t.db"
    code, out, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{db}"], capsys)
    assert code == 0, err
    assert "Initializing distributed" not in err
    (t,) = trials_of(db)
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["devices"] == 2
    assert t.user_attrs["reached"], t.user_attrs["best_metric"]
    c = t.user_attrs["curve"]
    assert c["metrics"]["global_step"] == [float(s) for s in c["steps"]]
    assert t.user_attrs["examples_seen"] == 32 * t.user_attrs["stopped_at_step"]


def test_a_module_with_its_own_dataloaders(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """No DataModule: the module takes ``batch_size_arg`` and serves its own loaders; a budget
    in epochs is counted from its training set (1437 digits)."""
    text = lit_spec(tmp_path, module="SelfContained", trials=1).read_text()
    text = text.replace('datamodule = "mylab.data:DigitsDataModule"\n', "")
    text = text.replace("max_steps = 200", "max_epochs = 1")
    spec = write(tmp_path, text)
    from tuner.run.specs import load

    assert load(spec).max_steps(16) == 90  # ceil(1437 / 16)
    db = tmp_path / "t.db"
    code, out, err = run_cli(["run", str(spec), "--storage", f"sqlite:///{db}", "-b", "16"],
                             capsys)
    assert code == 0, err
    (t,) = trials_of(db)
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["max_steps"] == 90


def test_a_lightning_module_noise_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    """The docs-style LitClassifier over the DigitsDataModule, unchanged: the probe measures
    inside Trainer.fit with --set metaparameters and no storage at all."""
    spec = lit_spec(tmp_path)
    url = f"sqlite:///{tmp_path / 'none.db'}"
    code, out, err = run_cli(["noise-scale", str(spec), "-b", "64", "--storage", url,
                              "--set", "learning_rate=0.1", "--set", "one_minus_momentum=0.1",
                              "--set", "module.dropout=0", "--steps", "40", "--points", "4",
                              "--format", "json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert [p["step"] for p in got["points"]] == [0, 10, 20, 30]
    assert got["small_batch"] == 16 and got["steps"] == 40
    assert got["b_simple"] is not None and math.isfinite(got["b_simple"]) and got["b_simple"] > 0
    assert all(p["trace_sigma"] > 0 for p in got["points"])
    assert not (tmp_path / "none.db").exists()


def test_a_lightning_module_local_cbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    """The same LitClassifier and DigitsDataModule, unchanged: a reference Trainer.fit and one
    Trainer.fit per branch, started from the reference's state (momentum buffers included)."""
    spec = lit_spec(tmp_path)
    url = f"sqlite:///{tmp_path / 'none.db'}"
    code, out, err = run_cli(["local-cbs", str(spec), "-b", "16", "--storage", url,
                              "--set", "learning_rate=0.05", "--set", "one_minus_momentum=0.1",
                              "--set", "module.dropout=0", "--steps", "40", "--points", "3",
                              "--horizon", "8", "--factors", "2,4", "--format", "json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert "Trainer.fit" in got["method"] and "val_loss" in got["method"]
    assert [c["step"] for c in got["checkpoints"]] == [0, 16, 32]
    assert got["checkpoints"][0]["loss"] is None  # Trainer.fit validates after steps only
    for c in got["checkpoints"]:
        assert [b["steps"] for b in c["branches"]] == [4, 2]
        assert all(b["loss"] is not None and math.isfinite(b["loss"]) for b in c["branches"])
        assert c["local_cbs"] in (16, 32, 64)
    assert got["checkpoints"][1]["loss"] > got["checkpoints"][2]["loss"]
    # the branches from step 32 start trained: a few steps from a fresh model would not do
    assert all(b["loss"] < got["checkpoints"][1]["loss"]
               for b in got["checkpoints"][2]["branches"])
    assert not (tmp_path / "none.db").exists()


def test_a_lightning_module_confirm_measures_at_the_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tuner confirm` on the docs-style LitClassifier (with its test_step) over a DataModule
    with a test split, both unchanged: each confirmation trial that reaches the target records
    there the sharpness (through the module's training_step), the test metrics (Trainer.test on
    the weights at the target, after the fit; test_acc stored as val_acc) and, for the best
    configuration's first seed, the loss-landscape slices."""
    spec = lit_spec(tmp_path, datamodule="DigitsTestSplitDataModule", trials=3)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert run_cli(["run", str(spec), "--storage", url, "-q"], capsys)[0] == 0
    code, out, err = run_cli(["confirm", str(spec), "--storage", url, "--top", "1", "--seeds",
                              "2", "--format", "json", "-q"], capsys)
    assert code == 0, err
    res = json.loads(out)
    reached = [c for c in res["configs"] if c["n_reached"]]
    assert reached, res
    for c in reached:
        assert c["sharpness"] > 0
        assert 0.8 <= c["test"] <= 1.0 and abs(c["test"] - c["val"]) < 0.1  # 269 test images
    assert "not measured" not in res["test"] and "not measured" not in res["sharpness"]
    assert any(c["has_landscape"] for c in reached)
    trials = [t for name in optuna.get_all_study_names(url) if name.endswith(".confirm")
              for t in optuna.load_study(study_name=name, storage=url).trials
              if t.user_attrs.get("reached")]
    assert trials
    for t in trials:
        a = t.user_attrs["at_target"]
        assert a["step"] == t.user_attrs["steps_to_target"] and a["sharpness_examples"] == 1024
        assert set(a["test"]) == {"val_acc", "val_loss"}
