"""Re-scoring stored studies at other targets and budgets (tuner.analysis.rescore, the CLI's
--target / --max-steps / --max-examples), checked against a direct computation over the
curves stored in Optuna's storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import SMALL_DIGITS, SMALL_NQM, run_cli, write
from tuner.core.errors import SpecError
from tuner.analysis.records import BatchStudy, TrialRecord
from tuner.analysis.rescore import Goal, rescore_study, rescore_trial, steps_to
from tuner.run import runner, specs as spec_mod

REPO = Path(__file__).resolve().parents[2]
# error <= 0.12 is the spec's target: trials stop there, so looser targets are exact
SPEC = SMALL_DIGITS.replace("trials = 4", "trials = 6")


def curve(steps: list[int], **metrics: list[float]) -> dict:
    return {"steps": steps, "metrics": metrics}


def rec(number: int, outcome: str, stopped: int, c: dict, steps: int | None = None
        ) -> TrialRecord:
    return TrialRecord(number=number, outcome=outcome, params={}, steps_to_target=steps,
                       stopped_at_step=stopped, curve=c)


# --- pure functions -----------------------------------------------------------------------


def test_goal_parse_and_refusals() -> None:
    assert Goal.parse("error<=0.06") == Goal("error", "<=", 0.06)
    assert Goal.parse(" val_acc > 0.9 ") == Goal("val_acc", ">", 0.9)
    assert Goal.parse("error<=0.06").direction == "minimize"
    assert Goal.parse("acc>=0.5").direction == "maximize" and not Goal.parse("a>=1").strict
    for bad in ("error", "error=0.1", "<=0.1", "error<=x", "error<=nan", "error<=inf"):
        with pytest.raises(ValueError, match="allowed: METRIC<=VALUE"):
            Goal.parse(bad)


def test_steps_to_first_crossing_strict_direction_and_cap() -> None:
    c = curve([10, 20, 30, 40], error=[0.5, 0.2, 0.1, 0.1], acc=[0.5, 0.8, 0.9, 0.9])
    assert steps_to(c, "error", 0.2) == 20
    assert steps_to(c, "error", 0.2, strict=True) == 30
    assert steps_to(c, "error", 0.05) is None
    assert steps_to(c, "acc", 0.9, direction="maximize") == 30
    assert steps_to(c, "acc", 0.9, strict=True, direction="maximize") is None
    assert steps_to(c, "error", 0.1, max_steps=29) is None
    assert steps_to(c, "loss", 1.0) is None  # not measured
    assert steps_to(curve([10, 20], error=[float("nan"), 0.1]), "error", 0.2) == 20


def test_rescore_trial_is_exact_or_unknown_never_invented() -> None:
    g = Goal("error", "<=", 0.15)
    c = curve([10, 20, 30], error=[0.5, 0.2, 0.12])
    # stopped at the spec's target (0.12 at step 30): the looser 0.15 is met at 30 as well
    r = rescore_trial(rec(0, "reached", 30, c, 30), g, cap=100)
    assert (r.outcome, r.steps_to_target, r.steps_after) == ("reached", 30, 20)
    # a stricter goal was never seen before the trial stopped at 30 < cap: unknown
    assert rescore_trial(rec(0, "reached", 30, c, 30), Goal("error", "<=", 0.05), 100
                         ).outcome == "unknown"
    # ... but within a cap of 30 steps it is exactly missed
    assert rescore_trial(rec(0, "reached", 30, c, 30), Goal("error", "<=", 0.05), 30
                         ).outcome == "missed"
    # a cap before the crossing: missed, exactly
    assert rescore_trial(rec(0, "reached", 30, c, 30), g, cap=25).outcome == "missed"
    # pruned at 20 without meeting it, cap 100: unknown; diverged stays diverged (exact)
    assert rescore_trial(rec(1, "pruned", 20, curve([10, 20], error=[0.5, 0.3])), g, 100
                         ).outcome == "unknown"
    assert rescore_trial(rec(2, "diverged", 20, curve([10], error=[0.9])), g, 100
                         ).outcome == "diverged"


def test_best_is_an_upper_bound_when_an_early_stopper_might_beat_it() -> None:
    g = Goal("error", "<=", 0.1)
    trials = [rec(0, "missed", 100, curve([10, 50, 100], error=[0.5, 0.09, 0.05])),
              rec(1, "pruned", 20, curve([10, 20], error=[0.5, 0.3]))]
    st = BatchStudy(8, trials, attrs={"budget": {"max_steps": 100}})
    new, note = rescore_study(st, g)
    assert [t.outcome for t in new.trials] == ["reached", "unknown"]
    assert (note.bound, note.n_unknown, note.n_could_beat) == ("upper", 1, 1)
    # the pruned trial stopped at 60 >= the best (50): it cannot beat it, the best is exact
    trials[1] = rec(1, "pruned", 60, curve([10, 60], error=[0.5, 0.3]))
    assert rescore_study(BatchStudy(8, trials, attrs={"budget": {"max_steps": 100}}), g
                         )[1].bound == "exact"
    # nothing met it and a trial stopped early: unknown, not "missed"
    assert rescore_study(BatchStudy(8, trials, attrs={"budget": {"max_steps": 100}}),
                         Goal("error", "<=", 0.01))[1].bound == "unknown"
    # max_examples caps at examples // B steps
    assert rescore_study(st, g, max_examples=8 * 40)[1].cap == 40


# --- stored studies: the CLI against a direct computation ---------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("rescore")
    spec = write(d, SPEC, "rescore_digits.toml")
    url = f"sqlite:///{d / 'r.db'}"
    loaded = spec_mod.load(spec)
    runner.run(loaded, url, loaded.batch_sizes, loaded.trials)
    return spec, url


def direct(url: str, metric: str, value: float, cap_of=lambda b, budget: budget
           ) -> dict[int, tuple[int | None, int]]:
    """Per batch size: (best steps among the stored curves that meet ``metric <= value``
    within the cap, number of finished trials that stopped before the cap without meeting
    it), straight from Optuna's storage."""
    out = {}
    for s in optuna.get_all_study_summaries(url):
        b = s.user_attrs["batch_size"]
        cap = cap_of(b, s.user_attrs["budget"]["max_steps"])
        best, early = None, 0
        for t in optuna.load_study(study_name=s.study_name, storage=url).trials:
            if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
                continue
            c = t.user_attrs["curve"]
            hits = [st for st, v in zip(c["steps"], c["metrics"][metric])
                    if st <= cap and v <= value]
            if hits:
                best = hits[0] if best is None else min(best, hits[0])
            elif t.user_attrs["stopped_at_step"] < cap and not t.user_attrs["diverged"]:
                early += 1
        out[b] = (best, early)
    return out


def curve_points(spec: Path, url: str, capsys: pytest.CaptureFixture[str], *extra: str
                 ) -> list[dict]:
    code, out, err = run_cli(["curve", str(spec), "--storage", url, "--format", "json",
                              "--n-boot", "0", *extra], capsys)
    assert code == 0, err
    return json.loads(out.replace(url, "URL"))  # (the adequacy advice names the storage)


def test_every_metric_is_stored_at_every_evaluation(stored: tuple[Path, str]) -> None:
    spec, url = stored
    for s in optuna.get_all_study_summaries(url):
        for t in optuna.load_study(study_name=s.study_name, storage=url).trials:
            c = t.user_attrs["curve"]
            assert set(c["metrics"]) == {"error", "accuracy", "loss"}
            assert all(len(v) == len(c["steps"]) for v in c["metrics"].values())
            # the target metric's column is Optuna's intermediate values (the dashboard's)
            assert dict(zip(c["steps"], c["metrics"]["error"])) == t.intermediate_values


def test_curve_at_a_looser_target_equals_the_direct_computation(
        stored: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    spec, url = stored
    obj = curve_points(spec, url, capsys, "--target", "error<=0.3")
    want = direct(url, "error", 0.3)
    got = {p["batch_size"]: p["best_steps"] for p in obj["points"]}
    assert got == {b: best for b, (best, _) in want.items()}
    assert all(v is not None for v in got.values())
    assert obj["target"]["metric"] == "error" and obj["target"]["value"] == 0.3
    # looser than the spec's target: every trial that stopped had met it (exact)
    assert all(p["best_bound"] == "exact" for p in obj["points"])


def test_curve_within_a_step_and_an_example_budget(
        stored: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    spec, url = stored
    by_steps = curve_points(spec, url, capsys, "--target", "error<=0.3", "--max-steps", "60")
    want = direct(url, "error", 0.3, lambda b, budget: 60)
    assert {p["batch_size"]: p["best_steps"] for p in by_steps["points"]} == {
        b: best for b, (best, _) in want.items()}
    by_examples = curve_points(spec, url, capsys, "--target", "error<=0.3",
                               "--max-examples", "2048")
    want = direct(url, "error", 0.3, lambda b, budget: 2048 // b)
    assert {p["batch_size"]: p["best_steps"] for p in by_examples["points"]} == {
        b: best for b, (best, _) in want.items()}


def test_a_stricter_target_is_bounded_not_invented(
        stored: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    spec, url = stored
    obj = curve_points(spec, url, capsys, "--target", "error<0.05")
    for p in obj["points"]:
        assert p["best_bound"] in ("exact", "upper", "unknown")
        if p["best_bound"] == "unknown":
            assert p["best_steps"] is None and p["n_unknown"] > 0
    assert any(p["n_unknown"] for p in obj["points"])  # trials stopped at the spec's target
    code, out, err = run_cli(["curve", str(spec), "--storage", url, "--target", "error<0.05",
                              "--n-boot", "0"], capsys)
    assert code == 0 and "unscored" in out
    assert "upper bound" in err or "unknown" in err


def test_several_targets_draw_one_figure(stored: tuple[Path, str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    spec, url = stored
    png = tmp_path / "targets.png"
    objs = curve_points(spec, url, capsys, "--target", "error<=0.3", "--target", "error<=0.2",
                        "--target", "loss<=1.0", "--plot", str(png))
    assert [o["target"]["value"] for o in objs] == [0.3, 0.2, 1.0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a harder target never needs fewer steps than an easier one, batch size by batch size
    easy, hard = ({p["batch_size"]: p["best_steps"] for p in o["points"]} for o in objs[:2])
    assert all(hard[b] >= easy[b] for b in easy if hard[b] is not None)


def test_other_commands_rescore_and_bad_targets_are_refused(
        stored: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, url = stored
    for cmd in (["edges"], ["sensitivity"], ["report", "--out", str(tmp_path / "r"),
                                             "--n-boot", "0"]):
        code, out, err = run_cli([*cmd, str(spec), "--storage", url, "--target",
                                  "error<=0.3"], capsys)
        assert code in (0, 1, 3), err  # edges: 1 at an edge, 3 under-tuned
        assert "error<=0.3" in out + err or "error&lt;=0.3" in (tmp_path / "r" / "index.html"
                                                               ).read_text()
    code, _, err = run_cli(["curve", str(spec), "--storage", url, "--target", "val_acc>=0.9"],
                           capsys)
    assert code == 2 and "'val_acc' is not in the stored curves" in err
    assert "accuracy, error, loss" in err
    code, _, err = run_cli(["curve", str(spec), "--storage", url, "--target", "error=0.1"],
                           capsys)
    assert code == 2 and "allowed: METRIC<=VALUE" in err


# --- analysis without the workload --------------------------------------------------------

PLUGIN = '''
from workloads.digits import Digits


class HiddenDigits(Digits):
    name = "hidden_digits"
'''


def test_analysis_needs_neither_the_plugin_nor_torch(tmp_path: Path) -> None:
    """`tuner curve` on a plug-in spec whose module cannot be imported: it reads the spec's
    name and seed and the stored attrs only (no torch, no data)."""
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "hidden_plugin.py").write_text(PLUGIN)
    spec = write(tmp_path, SMALL_DIGITS.replace('name = "digits"',
                                                'name = "hidden_plugin:HiddenDigits"')
                 .replace("batch_sizes = [16, 128]", "batch_sizes = [16]"), "hidden.toml")
    assert "hidden_plugin:HiddenDigits" in spec.read_text()
    url = f"sqlite:///{tmp_path / 'h.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plug), str(REPO)])}
    run = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(spec), "--storage", url,
                          "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    env["PYTHONPATH"] = str(REPO)  # the plug-in is gone
    probe = ("import sys\nfrom tuner.cli import cli\n"
             "try:\n    cli.main(sys.argv[1:], standalone_mode=False)\n"
             "finally:\n    print('heavy:', sorted(m for m in ('torch', 'lightning', "
             "'hidden_plugin', 'workloads') if m in sys.modules), file=sys.stderr)\n")
    for args in (["curve", str(spec), "--format", "json", "--n-boot", "0"],
                 ["edges", str(spec)], ["sensitivity", str(spec)],
                 ["curve", str(spec), "--target", "error<=0.3", "--n-boot", "0"]):
        p = subprocess.run([sys.executable, "-c", probe, *args, "--storage", url], env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode in (0, 1, 3), p.stderr  # edges: 3 under-tuned
        assert "heavy: []" in p.stderr, p.stderr
    # and running it now fails with one line naming the plug-in
    p = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(spec), "--storage", url],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "hidden_plugin" in p.stderr


# --- [target] also: trials train on until every goal, so each is exact -----------------------


def best_by_b(spec: Path, url: str, capsys: pytest.CaptureFixture[str], *extra: str
              ) -> dict[int, tuple[int | None, str]]:
    obj = curve_points(spec, url, capsys, *extra)
    return {p["batch_size"]: (p["best_steps"], p["best_bound"]) for p in obj["points"]}


def test_also_goals_are_exact_and_leave_the_target_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NQM (exact steps): with `also = ["loss<=0.001"]` the target's best is what it is
    without, and the re-scored 0.001 equals a study whose own target is 0.001, step for step;
    the lossless pruner is on (lossless for every goal)."""
    base = SMALL_NQM.replace('[pruner]\nname = "none"\nlossless = false\n', "")
    specs = {
        "plain": base,
        "also": base.replace('value = 0.01\n', 'value = 0.01\nalso = ["loss<=0.001"]\n'),
        "hard": base.replace('value = 0.01\n', 'value = 0.001\n'),
    }
    urls = {}
    for name, text in specs.items():
        path = write(tmp_path, text.replace("trials = 12", "trials = 16"), f"{name}.toml")
        urls[name] = (path, f"sqlite:///{tmp_path / (name + '.db')}")
        code, _, err = run_cli(["run", str(path), "--storage", urls[name][1], "--quiet"], capsys)
        assert code == 0, err
    plain = best_by_b(*urls["plain"], capsys)
    assert best_by_b(*urls["also"], capsys) == plain
    also_hard = best_by_b(*urls["also"], capsys, "--target", "loss<=0.001")
    hard = best_by_b(*urls["hard"], capsys)
    assert also_hard == hard and all(b == "exact" for _, b in also_hard.values())
    # without `also`, the same re-scoring is only bounded: trials stopped at 0.01
    assert any(b != "exact" for _, b in best_by_b(*urls["plain"], capsys, "--target",
                                                   "loss<=0.001").values())
    # the stored steps_to_also attr is the curve's first step meeting the goal
    for s in optuna.get_all_study_summaries(urls["also"][1]):
        for t in optuna.load_study(study_name=s.study_name, storage=urls["also"][1]).trials:
            c = t.user_attrs["curve"]
            assert t.user_attrs["steps_to_also"]["loss<=0.001"] == steps_to(c, "loss", 0.001)


@pytest.mark.parametrize("also, message", [
    ('["loss<0.001", 3]', "allowed: strings"),
    ('["error<=0.1"]', "'error' is not produced by workload 'nqm'"),
    ('["loss==0.1"]', "allowed: METRIC<=VALUE"),
    ('["loss<=0.01"]', "is the target itself"),
])
def test_bad_also_goals_are_refused(tmp_path: Path, also: str, message: str) -> None:
    text = SMALL_NQM.replace('value = 0.01\n', f'value = 0.01\nalso = {also}\n')
    with pytest.raises(SpecError, match=message):
        spec_mod.load(write(tmp_path, text, "bad.toml"))


def test_also_with_an_optuna_pruner_is_refused(tmp_path: Path) -> None:
    text = SMALL_DIGITS.replace('value = 0.12\n', 'value = 0.12\nalso = ["error<=0.08"]\n') + \
        '[pruner]\nname = "median"\n'
    with pytest.raises(SpecError, match="allowed: 'lossless'"):
        spec_mod.load(write(tmp_path, text, "median.toml"))


def test_also_on_a_trained_workload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Digits: the target's best is unchanged by `also`, and the extra goal is exact."""
    out = {}
    for name, extra in (("plain", ""), ("also", 'also = ["error<=0.08"]\n')):
        path = write(tmp_path, SPEC.replace("value = 0.12\n", f"value = 0.12\n{extra}"),
                     f"{name}.toml")
        url = f"sqlite:///{tmp_path / (name + '.db')}"
        code, _, err = run_cli(["run", str(path), "--storage", url, "--quiet"], capsys)
        assert code == 0, err
        out[name] = (path, url)
    assert best_by_b(*out["also"], capsys) == best_by_b(*out["plain"], capsys)
    hard = best_by_b(*out["also"], capsys, "--target", "error<=0.08")
    assert all(bound == "exact" for _, bound in hard.values())
    assert hard == {b: (best, "exact") for b, (best, _) in direct(out["also"][1], "error", 0.08
                                                                   ).items()}


def test_studies_stored_before_curves_were_kept_still_rescore(
        stored: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Studies of the previous version have no `curve` attr: the target metric's intermediate
    values stand in, so re-scoring on it works and other metrics are refused by name."""
    import sqlite3

    spec, url = stored
    old = tmp_path / "old.db"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as src, sqlite3.connect(old) as dst:
        src.backup(dst)  # (a file copy would miss what is still in the WAL)
    with sqlite3.connect(old) as db:
        gone = db.execute("DELETE FROM trial_user_attributes WHERE key = 'curve'").rowcount
    assert gone > 0
    old_url = f"sqlite:///{old}"
    assert curve_points(spec, old_url, capsys) == curve_points(spec, url, capsys)
    assert curve_points(spec, old_url, capsys, "--target", "error<=0.3") == \
        curve_points(spec, url, capsys, "--target", "error<=0.3")
    code, _, err = run_cli(["curve", str(spec), "--storage", old_url, "--target", "loss<=1"],
                           capsys)
    assert code == 2 and "allowed: error" in err
