"""``[trainer] trials_at_once = K`` through ``tuner run``: real workers on a SQLite file keep every
guarantee of the slot queue (exactly N finished trials on N distinct slots, each with its slot's
point and seed), store the attrs one trial at a time stores, and a worker killed or interrupted
while it holds K trials leaves all K to be re-run."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import SMALL_DIGITS, SMALL_NQM, run_cli, write
from procs import Worker, check_exact, slot_points, trials_of, wait_for, workers

# No pruner: each slot's outcome is its own, whatever trained beside it.
PLAIN = SMALL_DIGITS.replace("[eval]", '[pruner]\nname = "none"\n\n[eval]')
AT_ONCE = PLAIN.replace("[eval]", "[trainer]\ntrials_at_once = 4\n\n[eval]")
# Every trial runs a long budget, out of reach: long enough to be caught with K trials running.
LONG = (AT_ONCE.replace("value = 0.12", "value = 0.001").replace("max_steps = 400",
                                                                 "max_steps = 2500"))


def by_slot(url: str, b: int) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.user_attrs["slot"]: t for t in trials_of(url)[b]
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}


def test_trials_at_once_store_what_one_at_a_time_stores(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, many = (write(tmp_path, PLAIN, "one.toml"), write(tmp_path, AT_ONCE, "many.toml"))
    urls = {p: f"sqlite:///{tmp_path / (p.stem + '.db')}" for p in (one, many)}
    for p in (one, many):
        code, out, err = run_cli(["run", str(p), "--storage", urls[p], "-n", "6", "-b", "16"],
                                 capsys)
        assert code == 0, err[-2000:]
        assert ("4 at once as one vectorised model" in out + err) == (p == many)
    b = 16
    check_exact(trials_of(urls[many])[b], 6, slot_points(many, 6))
    alone, together = by_slot(urls[one], b), by_slot(urls[many], b)
    shared = [together[s].user_attrs.get("trials_at_once", 1) for s in range(6)]
    assert max(shared) == 4 and min(shared) >= 1, shared  # the most lanes that stepped together
    for s in range(6):
        a, t = alone[s].user_attrs, together[s].user_attrs
        assert set(a) | ({"trials_at_once"} if shared[s] > 1 else set()) == set(t)
        for key in ("seed", "reached", "steps_to_target", "stopped_at_step", "outcome",
                    "diverged", "max_steps"):
            assert a[key] == t[key], (b, s, key)
        assert together[s].intermediate_values.keys() == alone[s].intermediate_values.keys()
        assert together[s].value == alone[s].value
    # resumed with more trials: topped up to exactly N
    code, _, err = run_cli(["run", str(many), "--storage", urls[many], "-n", "9", "-b", "16"],
                           capsys)
    assert code == 0, err[-2000:]
    check_exact(trials_of(urls[many])[16], 9, slot_points(many, 9))


def holding(url: str, w: Worker, k: int) -> list[optuna.trial.FrozenTrial]:
    """The RUNNING trials of worker ``w``, once it trains ``k`` at once (each has reported)."""
    def find() -> list[optuna.trial.FrozenTrial] | None:
        assert w.popen.poll() is None, w.stderr[-2000:]
        mine = [t for ts in trials_of(url).values() for t in ts
                if t.state == TrialState.RUNNING and t.intermediate_values
                and str(t.user_attrs.get("worker", "")).endswith(f":{w.pid}")]
        return mine if len(mine) == k else None

    return wait_for(find, 120, f"worker {w.pid} training {k} trials")  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_worker_stopped_holding_k_trials_leaves_all_k_to_rerun(tmp_path: Path,
                                                                 sig: signal.Signals) -> None:
    spec = write(tmp_path, LONG, "long.toml")
    url = f"sqlite:///{tmp_path / 'k.db'}"
    args = ["run", str(spec), "--storage", url, "-b", "16", "-n", "4", "--heartbeat", "1"]
    with workers() as started:
        w = Worker(args)
        started.append(w)
        held = holding(url, w, 4)
        w.send(sig)
        assert w.wait(60) == (-9 if sig == signal.SIGKILL else 130), w.stderr[-2000:]
        later = Worker(args)
        started.append(later)
        assert later.wait(600) == 0, later.stderr[-2000:]
    trials = trials_of(url)[16]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in failed) == sorted(t.number for t in held)
    why = "stale" if sig == signal.SIGKILL else "KeyboardInterrupt"
    assert all(why in t.system_attrs["fail_reason"] for t in failed), failed
    check_exact(trials, 4, slot_points(spec, 4))
    slots = {t.user_attrs["slot"]: t.user_attrs["seed"] for t in held}
    rerun = by_slot(url, 16)
    assert {s: rerun[s].user_attrs["seed"] for s in slots} == slots  # same slots, same seeds
    assert "Traceback" not in later.stderr


@pytest.mark.parametrize("text,key", [
    (SMALL_NQM, "trainer.trials_at_once"),
    (AT_ONCE.replace('name = "momentum"', 'name = "lamb"').replace(
        "one_minus_momentum = { low = 0.01, high = 0.5, log = true }", ""), "optimizer.name"),
    (AT_ONCE.replace("trials_at_once = 4", 'trials_at_once = 4\nprecision = "bf16-mixed"'),
     "trainer.precision"),
    (AT_ONCE.replace("trials_at_once = 4", "trials_at_once = 0"), "trainer.trials_at_once"),
])
def test_what_cannot_train_at_once_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str) -> None:
    if "nqm" in text:
        text += "\n[trainer]\ntrials_at_once = 2\n"
    spec = write(tmp_path, text, "bad.toml")
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    code, out, err = run_cli(["run", str(spec), "--storage", url], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and key in err, err
    assert not (tmp_path / "bad.db").exists()


PLUGIN = '''
import torch
from torch import nn
from tuner.workload import Data, TrainedWorkload


class Base(TrainedWorkload):
    name = "base"
    def num_train_examples(self): return 64
    def load_data(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
        return Data(x[:64], y[:64], x[64:], y[64:])
    def build_model(self): return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class Dropped(Base):
    def build_model(self): return nn.Sequential(nn.Linear(8, 16), nn.AlphaDropout(0.1),
                                                nn.Linear(16, 3))


class Frozen(Base):
    def build_model(self):
        m = super().build_model()
        m[0].bias.requires_grad_(False)
        return m


class OwnLoss(Base):
    def training_loss(self, model, x, y, step):
        return nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 3)
    def forward(self, x):
        return self.lin(x + 0.01 * torch.randn_like(x))  # a random op: lanes would share it


class Randy(Base):
    def build_model(self): return Noisy()
'''


@pytest.mark.parametrize("cls,words", [
    ("Dropped", "AlphaDropout"), ("Frozen", "frozen parameter (0.bias)"),
    ("OwnLoss", "its own training_loss"), ("Randy", "pre-flight of 2 trials at once"),
])
def test_a_model_that_cannot_train_at_once_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cls: str, words: str) -> None:
    (tmp_path / "atonce_plugin.py").write_text(PLUGIN)
    text = (AT_ONCE.replace('name = "digits"\nhidden = [32]', f'name = "atonce_plugin:{cls}"')
            .replace("value = 0.12", "value = 0.3").replace("batch_sizes = [16, 128]",
                                                             "batch_sizes = [16]"))
    sys.path.insert(0, str(tmp_path))
    try:
        db = tmp_path / "p.db"
        code, out, err = run_cli(["run", str(write(tmp_path, text)), "--storage",
                                  f"sqlite:///{db}"], capsys)
        if cls == "Randy":  # the same spec one at a time runs
            ok = write(tmp_path, text.replace("trials_at_once = 4", "trials_at_once = 1"), "ok.toml")
            assert run_cli(["run", str(ok), "--storage", f"sqlite:///{tmp_path / 'ok.db'}", "-n",
                            "1"], capsys)[0] == 0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("atonce_plugin", None)
    assert code == 2, err
    assert "trainer.trials_at_once" in err and words in err, err
    assert len(err.strip().splitlines()) == 1
    assert not db.exists()
