"""The tuning-adequacy verdict (tuner/analysis/adequacy.py): per-point intervals, the rule, its
advice, and how curve, edges, sensitivity and the report carry it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write
from tuner.analysis.adequacy import Rule, assess, best_interval, narrower_bounds
from tuner.analysis.curves import curve
from tuner.analysis.fit import Fit, regimes
from tuner.analysis.records import TrialRecord
from tuner.core.space import Param

NQM = """\
seed = 0
batch_sizes = [256]
trials = 24

[workload]
name = "nqm"

[optimizer]
name = "sgd"

[search_space]
learning_rate = { low = 0.3, high = 1.5, log = true }

[target]
metric = "loss"
value = 0.01

[budget]
max_steps = 1_000_000_000

[eval]
first_step = 1
relative = 1.0
min_interval = 1

[pruner]
name = "none"
lossless = false
"""
# At B = 256, SGD's steps to loss 0.01 fall as 1/lr up to lr ~ 0.9, where the noise floor
# rises above the target (missed): over [0.3, 1.5] about 9 of 24 trials lie within 1.25x of the
# best, well inside the range. Over 8 decades, 8 trials leave one in the good region; below
# 0.1 the best is at the high edge.
WIDE = NQM.replace("low = 0.3, high = 1.5", "low = 1e-7, high = 10.0").replace(
    "trials = 24", "trials = 8")
LOW = NQM.replace("low = 0.3, high = 1.5", "low = 0.01, high = 0.1")


def test_edges_exit_0_1_and_3_tell_clean_edge_and_under_tuned_apart(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    codes = {}
    for name, text in (("tuned", NQM), ("wide", WIDE), ("low", LOW)):
        path = write(tmp_path, text.replace("seed = 0", f'seed = 0\nname = "{name}"'),
                     f"{name}.toml")
        assert run_cli(["run", str(path), "--storage", url, "-q"], capsys)[0] == 0
        codes[name], out, err = run_cli(["edges", str(path), "--storage", url], capsys)
        print(name, out, err)
        if name == "tuned":
            assert "edges clean" in out and "every batch size with a point adequately tuned" \
                in out and "under-tuned" not in out
        if name == "wide":
            assert "edges clean" in out
            line = [x for x in out.splitlines() if "under-tuned at B = 256" in x][0]
            assert "within 1.25x of the best steps (rule: >= 3)" in line
            assert f"tuner run {path} --storage {url} -b 256 --trials" in line
            # --no-adequacy: the edge check alone, as before
            assert run_cli(["edges", str(path), "--storage", url, "--no-adequacy"],
                           capsys)[0] == 0
        if name == "low":
            assert "at edge" in out
    assert codes == {"tuned": 0, "wide": 3, "low": 1}


def test_curve_and_sensitivity_show_the_interval_and_verdict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    path = write(tmp_path, WIDE, "wide.toml")
    assert run_cli(["run", str(path), "--storage", url, "-q"], capsys)[0] == 0
    code, out, _ = run_cli(["curve", str(path), "--storage", url, "--format", "json"], capsys)
    assert code == 0
    obj = json.loads(out)
    [p] = obj["points"]
    assert p["tuning"] == "under-tuned" and p["n_good"] == 1 and obj["under_tuned"] == [256]
    lo, hi = p["best_ci95"]
    assert lo < p["best_steps"] / 1.25 and hi == p["best_steps"]
    assert "tuning_rule" in obj and p["tuning_reasons"] and p["tuning_advice"]
    code, out, _ = run_cli(["curve", str(path), "--storage", url, "--format", "csv"], capsys)
    header = out.splitlines()[0].split(",")
    assert {"best_ci95", "good", "tuning"} <= set(header)
    code, out, _ = run_cli(["sensitivity", str(path), "--storage", url], capsys)
    assert code == 0 and "under-tuned at B = 256" in out
    assert "feasible" in out.splitlines()[1]
    png = tmp_path / "c.png"  # with error bars
    assert run_cli(["curve", str(path), "--storage", url, "--plot", str(png)], capsys)[0] == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(["report", str(path), "--storage", url, "--no-dashboard", "--out",
                            str(tmp_path / "r")], capsys)
    page = (tmp_path / "r" / "index.html").read_text()
    assert code == 0, err
    assert "needs attention" in page and "under-tuned at B = 256: only 1 trial(s)" in page


def fm_study(b: int, best: int, n_good: int, n_diverged: int, n: int = 16
             ) -> list[TrialRecord]:
    """One batch size shaped like the Fashion-MNIST run of issue 18: ``n`` trials, ``n_good``
    reached within 1.25x of ``best`` (the best included), ``n_diverged`` diverged at the
    largest learning rates, the rest reached at 1.6x .. 3x the best."""
    lrs = np.geomspace(1e-3, 10.0, n)
    trials = []
    for i, lr in enumerate(lrs):
        params = {"learning_rate": float(lr)}
        if i >= n - n_diverged:
            trials.append(TrialRecord(i, "diverged", params))
        elif i < n_good:
            trials.append(TrialRecord(i, "reached", params, int(best * (1 + 0.2 * i / n_good))))
        else:
            trials.append(TrialRecord(i, "reached", params, int(best * (1.6 + 0.1 * i))))
    return trials


def test_the_fashion_mnist_shape_is_flagged_where_one_trial_is_good() -> None:
    """Best steps 2786 / 1224 / 280 / 220 / 140 at B = 32 .. 8192, 16 trials each, 10 of 16
    diverged at B = 32, exactly one trial within 1.25x of the best at three batch sizes."""
    space = {"learning_rate": Param("learning_rate", low=1e-3, high=10.0, log=True)}
    shape = {32: (2786, 4, 10), 128: (1224, 1, 0), 512: (280, 1, 2), 2048: (220, 6, 0),
             8192: (140, 1, 3)}
    studies = {b: fm_study(b, best, good, div) for b, (best, good, div) in shape.items()}
    verdicts = {b: assess(b, t, space) for b, t in studies.items()}
    assert {b for b, a in verdicts.items() if a.under_tuned} == {32, 128, 512, 8192}
    assert verdicts[2048].status == "adequate" and verdicts[2048].n_good == 6
    for b in (128, 512, 8192):
        a = verdicts[b]
        assert a.n_good == 1 and a.ci95 is not None and a.ci95[0] < a.best_steps / 1.25
        assert any("more trials: tuner run SPEC -b" in x for x in a.advice)
    a32 = verdicts[32]
    assert a32.n_diverged == 10 and a32.feasible == pytest.approx(6 / 16)
    assert any("10 of 16 trials diverged" in r for r in a32.reasons)
    # the advice bounds the range by the trials that did not diverge (lr <= 0.0215)
    [narrow] = [x for x in a32.advice if x.startswith("narrow the range")]
    assert "learning_rate = { low = 0.001, high = 0.022 }" in narrow
    # the curve marks them, is unreliable for it, and tries a fit without them
    c = curve("fm", {"metric": "error", "value": 0.13, "direction": "minimize"}, "momentum",
              studies, {}, n_boot=200, adequacy=verdicts)
    assert c.under_tuned == [32, 128, 512, 8192]
    assert "under-tuned at B = 32, 128, 512, 8192" in c.unreliable_because
    assert c.fit_tuned is None and c.fit_tuned_because == "fewer than 3 batch sizes reached " \
        "the target"
    assert [p.tuning for p in c.points] == ["under-tuned"] * 3 + ["adequate", "under-tuned"]


def test_best_interval_is_the_exact_bootstrap_distribution_of_the_best() -> None:
    """The exact quantiles of the best of a resample equal those of many real resamples."""
    steps = np.array([100, 110, 130, 150, 170, 200, 260, np.inf, np.inf, np.inf, np.inf, 400])
    rng = np.random.default_rng(1)
    m = steps[rng.integers(0, len(steps), (200_000, len(steps)))].min(axis=1)
    lo, hi = best_interval(steps)
    q_lo, q_hi = np.quantile(m, [0.025, 0.975], method="inverted_cdf")
    assert (lo, hi) == (100 * 100 / q_hi, 100 * 100 / q_lo) == (100 * 100 / 150, 100.0)
    # fewer reached trials than the 97.5 % quantile needs: unbounded below
    assert best_interval(np.array([100, np.inf, np.inf, np.inf]))[0] == 0.0
    assert best_interval(np.array([np.inf, np.inf])) is None
    assert best_interval(np.array([])) is None


def test_the_rule_is_what_it_says() -> None:
    space = {"learning_rate": Param("learning_rate", low=1e-3, high=1.0, log=True)}
    tight = [TrialRecord(i, "reached", {"learning_rate": 0.1 + 0.01 * i}, 100 + i)
             for i in range(12)]
    a = assess(64, tight, space)
    assert a.status == "adequate" and a.n_good == 12 and a.reasons == []
    assert assess(64, tight, space, Rule(min_good=13)).under_tuned
    none = [TrialRecord(0, "missed", {"learning_rate": 0.1})]
    assert assess(64, none, space).status == "no point"
    # two close trials: a narrow interval (its low end 100^2 / 101), but too few good ones
    a = assess(64, tight[:2], space)
    assert a.ci95 == (100 * 100 / 101, 100.0) and a.reasons == [
        "only 2 trial(s) within 1.25x of the best steps (rule: >= 3)"]
    # one reached of four: unbounded below
    a = assess(64, tight[:1] + none * 3, space)
    assert a.ci95 == (0.0, 100.0) and "reaches down to 0 (unbounded)" in a.reasons[1]
    assert Rule().text().startswith(">= 3 trials within 1.25x")


def test_narrower_bounds_enclose_the_trials_that_did_not_diverge() -> None:
    space = {"learning_rate": Param("learning_rate", low=1e-4, high=10.0, log=True),
             "one_minus_momentum": Param("one_minus_momentum", low=0.01, high=1.0, log=True)}
    trials = [TrialRecord(0, "reached", {"learning_rate": 0.0123, "one_minus_momentum": 0.011}, 9),
              TrialRecord(1, "missed", {"learning_rate": 0.00031, "one_minus_momentum": 0.9}),
              TrialRecord(2, "diverged", {"learning_rate": 3.0, "one_minus_momentum": 0.5})]
    [lr] = narrower_bounds(trials, space)  # momentum's feasible trials span the whole range
    assert lr.startswith("learning_rate = { low = 0.0003, high = 0.013 }")


def test_regimes_follow_b_crit_s_interval() -> None:
    f = Fit(100.0, 1000.0)
    assert regimes(100, f) == ["perfect scaling"]
    f.ci95 = {"b_crit": (300.0, 3000.0)}
    assert regimes(100, f) == ["perfect scaling", "diminishing returns"]
    f.ci95 = {"b_crit": (10.0, 1e6)}
    assert regimes(100, f) == ["perfect scaling", "diminishing returns",
                               "maximal data parallelism"]


def test_best_interval_of_a_best_at_step_0_is_a_point() -> None:
    assert best_interval(np.array([0.0, 0.0, 5.0, np.inf])) == (0.0, 0.0)
