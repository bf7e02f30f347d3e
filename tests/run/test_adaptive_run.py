"""``tuner run --adaptive`` on the exact NQM against the full grid, resuming, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import SMALL_NQM, run_cli, write
from procs import slot_points

from tuner.analysis.adaptive import trained_examples
from tuner.run import specs
from tuner.run.adaptive import stored_trials

SPEC = str(Path(__file__).parents[2] / "studies" / "nqm_precond_p050.toml")


def _b_crit(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[float, int]:
    code, out, _ = run_cli(["curve", SPEC, "--storage", url, "--format", "json"], capsys)
    assert code == 0
    d = json.loads(out)
    return d["fit"]["b_crit"], sum(p["n_trials"] for p in d["points"])


def test_adaptive_reproduces_the_full_grid_b_crit_on_the_nqm(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ada, full = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'f.db'}"
    code, out, err = run_cli(["run", SPEC, "--adaptive", "--storage", ada, "-q"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("adaptive: 4 batch sizes first, log-spaced")
    assert [x for x in lines if x.startswith("adaptive: B = ")][:4] == [
        f"adaptive: B = {b}: first 4, log-spaced over the spec's 10"
        for b in (4, 256, 16384, 1048576)]
    assert any("predicted" in x and "% off" in x for x in lines)
    assert lines[-1].startswith("adaptive: stop: ")
    assert "best_steps" in out  # the summary table of the measured batch sizes
    assert run_cli(["run", SPEC, "--storage", full, "-q"], capsys)[0] == 0
    b_ada, n_ada = _b_crit(ada, capsys)
    b_full, n_full = _b_crit(full, capsys)
    assert n_full == 1000 and n_ada < 0.5 * n_full
    # the NQM is exact and the sequence seeded: this is a measurement, not luck
    assert 0.75 <= b_ada / b_full <= 1.25, (b_ada, b_full)
    # run again: everything is stored, the same plan is re-derived and nothing is added
    code, _, err2 = run_cli(["run", SPEC, "--adaptive", "--storage", ada, "-q"], capsys)
    assert code == 0 and err2.splitlines()[-1] == lines[-1]
    assert _b_crit(ada, capsys) == (b_ada, n_ada)


@pytest.mark.parametrize("extra, clash", [
    (["-b", "4"], "--batch-size"), (["--workers", "2"], "--workers"),
    (["--storage", "sqlite://"], "in-memory")])
def test_adaptive_refuses_what_it_cannot_combine_with(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], clash: str) -> None:
    db = tmp_path / "x.db"
    args = ["run", SPEC, "--adaptive", "--storage", f"sqlite:///{db}", *extra]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and clash in err and "allowed:" in err
    assert not db.exists()


def test_an_interrupted_adaptive_run_resumes_to_what_one_run_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped by a small budget after its first batch sizes, then run again without one: the
    stored studies end as an uninterrupted run leaves them (rounds replayed from the first
    trials of each study, then continued)."""
    once, twice = f"sqlite:///{tmp_path / 'o.db'}", f"sqlite:///{tmp_path / 't.db'}"
    code, _, err1 = run_cli(["run", SPEC, "--adaptive", "--storage", once, "-q"], capsys)
    assert code == 0
    code, _, err = run_cli(["run", SPEC, "--adaptive", "--storage", twice, "-q",
                            "--budget-examples", "1e9"], capsys)
    assert code == 0 and "the budget is spent" in err
    code, out, _ = run_cli(["curve", SPEC, "--storage", twice, "--format", "json"], capsys)
    stopped = {p["batch_size"]: p["n_trials"] for p in json.loads(out)["points"]}
    code, _, err2 = run_cli(["run", SPEC, "--adaptive", "--storage", twice, "-q"], capsys)
    assert code == 0
    points = {}
    for url in (once, twice):
        code, out, _ = run_cli(["curve", SPEC, "--storage", url, "--format", "json"], capsys)
        d = json.loads(out)
        points[url] = ([(p["batch_size"], p["n_trials"], p["best_steps"]) for p in d["points"]],
                       d["fit"]["b_crit"])
    assert points[twice] == points[once]
    assert sum(stopped.values()) < sum(n for _, n, _ in points[once][0])
    assert err2.splitlines()[-1] == err1.splitlines()[-1]  # the same stop, for the same reason


def _examples(url: str) -> float:
    """Trained examples of every stored trial of SPEC's studies at ``url``."""
    return sum(trained_examples(b, t) for b, t in stored_trials(specs.load(SPEC), url).items())


def test_warm_starts_and_compass_steps_find_the_same_b_crit_for_less(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Later batch sizes start at the params predicted from the measured bests, and each ends
    with compass steps around its best: on the exact NQM, B_crit as the spec's search alone
    finds it (within 10 %), for at most 0.7x its trained examples; the chosen points are the
    study's record of why each trial ran where it did."""
    warm, cold = f"sqlite:///{tmp_path / 'w.db'}", f"sqlite:///{tmp_path / 'c.db'}"
    code, _, err = run_cli(["run", SPEC, "--adaptive", "--storage", warm, "-q"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    firsts = [x for x in lines if "trials around" in x]
    assert firsts and all("(predicted: B = " in x for x in firsts)
    assert not any(x.startswith("  B = 4: first") for x in lines)  # nothing measured before it
    assert any("compass step(s) around the best" in x for x in lines)
    code, _, err = run_cli(["run", SPEC, "--adaptive", "--no-warm-start", "--storage", cold,
                            "-q"], capsys)
    assert code == 0 and "trials around" not in err and "compass" not in err
    (b_warm, _), (b_cold, _) = _b_crit(warm, capsys), _b_crit(cold, capsys)
    assert 0.9 <= b_warm / b_cold <= 1.1, (b_warm, b_cold)
    assert _examples(warm) <= 0.7 * _examples(cold), (_examples(warm), _examples(cold))
    stored = {s.study_name: s.user_attrs.get("chosen_points")
              for s in optuna.get_all_study_summaries(warm)}
    chosen = [a for a in stored.values() if a]
    assert chosen and all(set(a["points"]) == set(a["why"]) for a in chosen)
    assert any(w.startswith("predicted: ") for a in chosen for w in a["why"].values())
    assert any(w.startswith("a compass step") for a in chosen for w in a["why"].values())
    assert not any(s.user_attrs.get("chosen_points")
                   for s in optuna.get_all_study_summaries(cold))


def test_a_batch_size_where_most_trials_diverge_is_judged_without_a_crash(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A learning rate range mostly past the NQM's stability edge: judging a round works out
    which narrower range would do, reading the search space by name (given the spec's tuple
    of parameters, it raised AttributeError)."""
    text = SMALL_NQM.replace("learning_rate = { low = 1e-4, high = 10.0, log = true }",
                             "learning_rate = { low = 0.1, high = 1000.0, log = true }")
    spec = write(tmp_path, text.replace("batch_sizes = [16, 1024]",
                                        "batch_sizes = [16, 64, 256, 1024]"))
    url = f"sqlite:///{tmp_path / 'd.db'}"
    code, _, err = run_cli(["run", str(spec), "--adaptive", "--storage", url, "-q"], capsys)
    assert code == 0, err
    assert err.splitlines()[-1].startswith("adaptive: stop: ")


def test_a_study_with_trials_before_the_adaptive_run_keeps_its_slots_points(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Slots that ran before `--adaptive` keep the sampler's points: no warm start is chosen
    for them, and the later compass steps take only new slots."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert run_cli(["run", SPEC, "-b", "256", "--trials", "8", "--storage", url, "-q"],
                   capsys)[0] == 0
    code, _, err = run_cli(["run", SPEC, "--adaptive", "--storage", url, "-q"], capsys)
    assert code == 0, err
    assert "  B = 256: no warm start (the study had trials before this run)" in err
    study = next(s for s in optuna.get_all_study_summaries(url)
                 if s.user_attrs.get("batch_size") == 256)
    chosen = study.user_attrs.get("chosen_points") or {"points": {}}
    assert all(int(slot) >= 8 for slot in chosen["points"])
    trials = optuna.load_study(study_name=study.study_name, storage=url).trials
    first = sorted((t for t in trials if t.user_attrs["slot"] < 8),
                   key=lambda t: t.user_attrs["slot"])
    assert [t.params for t in first] == slot_points(SPEC, 8)
