"""``tuner confirm``: the best configurations re-run with fresh seeds, real training on digits
and Fashion-MNIST (its test split), and the sharpness estimator on a known Hessian."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch

from conftest import SMALL_DIGITS, run_cli, write
from tuner.train.sharpness import top_eigenvalue


def test_power_iteration_finds_the_top_eigenvalue_of_a_known_hessian() -> None:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    eig = torch.linspace(0.1, 3.0, 20, dtype=torch.float64)
    eig[-1] = 7.5  # a clear gap: power iteration converges fast
    a = q @ torch.diag(eig) @ q.T
    w = torch.randn(20, generator=g, dtype=torch.float64, requires_grad=True)
    lam, iters = top_eigenvalue(lambda: 0.5 * w @ a @ w + (w ** 2).sum() * 0, [w],
                                iterations=200, tol=1e-10)
    assert lam == pytest.approx(7.5, rel=1e-6) and iters < 200


def _n(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("select count(*) from trials t join studies s using (study_id) "
                         "where s.study_name like '%.confirm'").fetchone()[0]


def test_confirm_reruns_the_best_configs_with_fresh_seeds(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, SMALL_DIGITS, "d.toml")
    db = tmp_path / "d.db"
    url = f"sqlite:///{db}"
    assert run_cli(["run", str(path), "--storage", url, "-q"], capsys)[0] == 0
    code, out, err = run_cli(["confirm", str(path), "--storage", url, "--top", "2", "--seeds",
                              "2", "--format", "json", "-q"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["spec"] == "d.confirm"
    by_b: dict[int, list] = {}
    for c in res["configs"]:
        by_b.setdefault(c["batch_size"], []).append(c)
        assert c["n_seeds"] == 2 and c["n_reached"] <= 2
        if c["n_reached"]:
            assert c["sharpness"] is not None and c["sharpness"] > 0
            assert c["test"] is None  # digits has no test split
            assert c["optimism"] == pytest.approx(c["mean"] / c["original_steps"])
    assert "not measured (the workload has no test split" in res["test"]
    # the loss-landscape slices: the best configuration's first seed, where it reached
    assert all(c["has_landscape"] == (c["config"] == 0 and c["n_reached"] > 0)
               for c in res["configs"] if c["n_reached"] == c["n_seeds"])
    for b, configs in by_b.items():
        assert [c["config"] for c in configs] == [0, 1]
        original = optuna.load_study(study_name=f"d.B{b}.seed0", storage=url)
        trials = {t.number: t for t in original.trials}
        best = sorted((t for t in trials.values() if t.user_attrs.get("reached")),
                      key=lambda t: (t.user_attrs["steps_to_target"], t.number))
        assert [c["trial"] for c in configs] == [t.number for t in best[:2]]
        conf = optuna.load_study(study_name=f"d.B{b}.seed0.confirm", storage=url)
        seeds_before = {t.user_attrs["seed"] for t in original.trials}
        for t in conf.trials:
            k = t.user_attrs["config"]
            assert t.params == pytest.approx(trials[configs[k]["trial"]].params)
            assert t.user_attrs["seed"] not in seeds_before  # fresh seeds
            assert t.state == optuna.trial.TrialState.COMPLETE  # never pruned
        assert conf.user_attrs["spec_name"] == "d.confirm"
        assert conf.user_attrs["confirms"]["study"] == f"d.B{b}.seed0"
    n = _n(db)
    assert n == 2 * 2 * 2
    # again: nothing new; one more seed: one more trial per configuration
    assert run_cli(["confirm", str(path), "--storage", url, "--top", "2", "--seeds", "2",
                    "-q"], capsys)[0] == 0
    assert _n(db) == n
    code, out, err = run_cli(["confirm", str(path), "--storage", url, "--top", "2", "--seeds",
                              "3", "-q", "-b", "16"], capsys)
    assert code == 0, err
    assert _n(db) == n + 2 and "optimism" in out and "sharpness" in out
    # the confirmation studies read like any spec's, and the report shows them
    code, out, err = run_cli(["curve", "d.confirm", "--storage", url, "--n-boot", "0"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["report", str(path), "--storage", url, "--out",
                            str(tmp_path / "rep"), "--n-boot", "0", "--no-dashboard"], capsys)
    assert code == 0, err
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Confirmation with fresh seeds: d.confirm" in page and "Loss-landscape slices" in page


def test_confirm_without_a_reached_trial_or_stored_studies(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, SMALL_DIGITS.replace("value = 0.12", "value = 0.0001"), "hard.toml")
    url = f"sqlite:///{tmp_path / 'h.db'}"
    code, _, err = run_cli(["confirm", str(path), "--storage", url], capsys)
    assert code == 2 and "no SQLite file" in err
    assert run_cli(["run", str(path), "--storage", url, "-q", "--trials", "2"], capsys)[0] == 0
    code, _, err = run_cli(["confirm", str(path), "--storage", url], capsys)
    assert code == 2 and "nothing to confirm" in err


FMNIST = """\
batch_sizes = [64]
trials = 3

[workload]
name = "fashion_mnist"
model = "mlp"
depth = 1
width = 32
val_size = 2000
train_size = 4000

[optimizer]
name = "momentum"

[search_space]
learning_rate = { low = 0.05, high = 0.2, log = true }
one_minus_momentum = { low = 0.05, high = 0.2, log = true }

[target]
metric = "error"
value = 0.3

[budget]
max_steps = 400

[eval]
first_step = 10
relative = 0.1
min_interval = 10
"""


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
                             ).exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_confirm_measures_the_test_split_where_the_target_is_reached(tmp_path: Path,
                                                                    capsys) -> None:
    path = write(tmp_path, FMNIST, "f.toml")
    url = f"sqlite:///{tmp_path / 'f.db'}"
    assert run_cli(["run", str(path), "--storage", url, "-q"], capsys)[0] == 0
    code, out, err = run_cli(["confirm", str(path), "--storage", url, "--top", "1", "--seeds",
                              "2", "--format", "json", "-q"], capsys)
    assert code == 0, err
    (c,) = json.loads(out)["configs"]
    assert c["n_seeds"] == 2 and c["n_reached"] >= 1  # a fresh seed may miss: seed noise
    assert c["val"] <= 0.3
    assert 0 < c["test"] < 0.4 and abs(c["test"] - c["val"]) < 0.08  # the 10,000 t10k images
    assert c["sharpness"] > 0


def test_landscape_slices_are_filter_normalised_and_leave_the_model_as_it_was() -> None:
    from tuner.train.landscape import filter_normalised_direction, slices

    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, generator=g, requires_grad=True)
    bias = torch.randn(3, generator=g, requires_grad=True)
    d = filter_normalised_direction([w, bias], torch.Generator().manual_seed(2))
    assert torch.allclose(d[0].norm(dim=1), w.detach().norm(dim=1), rtol=1e-5)
    assert not d[1].any()  # one-dimensional parameters: no direction (Li et al.)
    before = w.detach().clone()

    def loss() -> torch.Tensor:
        return ((w - 1.0) ** 2).sum() + (bias ** 2).sum()

    out = slices(loss, [w, bias], seed=0, points_1d=5, points_2d=3)
    assert torch.equal(w.detach(), before)
    assert out["alphas"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and len(out["loss_2d"]) == 3
    assert out["loss_1d"][2] == pytest.approx(float(loss()))
    assert out["loss_2d"][1][1] == pytest.approx(float(loss()))
    # a quadratic along a line: second differences are constant
    y = out["loss_1d"]
    assert y[0] - 2 * y[1] + y[2] == pytest.approx(y[2] - 2 * y[3] + y[4], rel=1e-4)
