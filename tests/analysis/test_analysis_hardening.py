"""Analysis on storages that older versions or killed runs left behind (issue 13).

Each storage is built with real Optuna calls on a real SQLite file, with the study attrs
``tuner run`` writes (tuner.store.storage.study_attrs); no training, so every test takes a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from conftest import SMALL_DIGITS, run_cli, write
from tuner.run import specs as spec_mod
from tuner.analysis.fit import fit_with_bootstrap
from tuner.analysis.records import TrialRecord
from tuner.store.source import load
from tuner.analysis.summary import spec_curve, verdict
from tuner.core.space import distributions
from tuner.spec import Spec
from tuner.store.storage import open_storage, study_attrs, study_name

SPEC = SMALL_DIGITS.replace("batch_sizes = [16, 128]", "batch_sizes = [16, 64, 256, 1024]")


def make_study(url: str, spec: Spec, b: int) -> optuna.Study:
    """A study as `tuner run` creates it: its name and every attr of the storage contract."""
    study = optuna.create_study(storage=open_storage(url), study_name=study_name(spec, b))
    for k, v in study_attrs(spec, b).items():
        study.set_user_attr(k, v)
    return study


def params(spec: Spec, slot: int) -> dict[str, float]:
    """A point inside the search space that depends on the slot."""
    return {p.name: p.low + (p.high - p.low) * ((slot * 0.37 + 0.1) % 1.0) for p in spec.space}


def finished(spec: Spec, slot: int, steps: int | None, state: TrialState = TrialState.COMPLETE,
             attrs: dict[str, Any] | None = None) -> optuna.trial.FrozenTrial:
    """A finished trial of ``slot``: reached in ``steps`` steps, or missed (None)."""
    a = {"slot": slot, "reached": steps is not None, "steps_to_target": steps,
         "stopped_at_step": steps or 400} if attrs is None else attrs
    return create_trial(state=state, value=None if state == TrialState.PRUNED else
                        float(steps or 400), params=params(spec, slot),
                        distributions=distributions(spec.space), user_attrs=a)


def fill(study: optuna.Study, spec: Spec, steps: list[int | None]) -> None:
    """One finished trial per slot 0, 1, ...: reached in ``steps[slot]`` (None: missed)."""
    for slot, s in enumerate(steps):
        study.add_trial(finished(spec, slot, s))


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    return write(tmp_path, SPEC, "hard.toml")


def test_duplicate_finished_slots_count_once_with_a_warning(
    spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_mod.load(spec_file)
    url = f"sqlite:///{tmp_path / 'dup.db'}"
    small = make_study(url, spec, 16)
    fill(small, spec, [300, 200, None, 250])
    # as the old queue did: slot 1 re-run and finished three more times, once better than the
    # first, via the queue (enqueue + tell) and as stored copies
    for steps in (100, 220):
        small.enqueue_trial(params(spec, 1), user_attrs={"slot": 1})
        t = small.ask()
        for k, v in {"reached": True, "steps_to_target": steps}.items():
            t.set_user_attr(k, v)
        small.tell(t, float(steps))
    small.add_trial(finished(spec, 1, 150))
    for b, steps in ((64, [90, 80, 120, 70]), (256, [40, 30, 35, 60]), (1024, [30, 25, 20, 28])):
        fill(make_study(url, spec, b), spec, steps)

    code, out, err = run_cli(["curve", str(spec_file), "--storage", url, "--format", "json",
                              "--n-boot", "20"], capsys)
    assert code == 0, err
    obj = json.loads(out)
    p16 = obj["points"][0]
    assert p16["batch_size"] == 16 and p16["n_trials"] == 4 and p16["n_reached"] == 3
    assert p16["best_steps"] == 200  # the first finished trial of slot 1, not the re-runs
    assert p16["n_duplicates"] == 3 and obj["duplicate_trials_set_aside"] == 3
    lines = [line for line in err.splitlines() if "duplicate" in line]
    assert len(lines) == 1
    assert study_name(spec, 16) in lines[0] and " 3 duplicate" in lines[0]
    assert "older version" in lines[0]

    code, out, err = run_cli(["sensitivity", "hard", "--storage", url, "--format", "json"],
                             capsys)
    assert code == 0, err
    s16 = json.loads(out)["hard"][0]
    assert s16["counts"]["reached"] == 3 and s16["duplicates_set_aside"] == 3
    assert sum(s16["counts"].values()) == 4 and s16["best_steps"] == 200
    assert " 3 duplicate" in err
    # edges (and report) read the same records
    code, _, err = run_cli(["edges", "hard", "--storage", url], capsys)
    assert code in (0, 1, 3) and " 3 duplicate" in err


@pytest.mark.slow
def test_half_created_studies_and_trials_without_attrs_are_skipped(
    spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_mod.load(spec_file)
    url = f"sqlite:///{tmp_path / 'half.db'}"
    for b, steps in ((16, [300, 200, 250]), (64, [90, 80, 120])):
        fill(make_study(url, spec, b), spec, steps)
    # killed after its first attr: a spec name, no batch size
    half = optuna.create_study(storage=open_storage(url), study_name=study_name(spec, 256))
    half.set_user_attr("spec_name", spec.name)
    # killed half-way through the attrs, with a trial already in it
    part = optuna.create_study(storage=open_storage(url), study_name=study_name(spec, 1024))
    for k, v in list(study_attrs(spec, 1024).items())[:9]:
        part.set_user_attr(k, v)
    part.add_trial(finished(spec, 0, 10))
    # trials whose attrs are gone, in a complete study
    big = make_study(url, spec, 512)
    fill(big, spec, [40, 30])
    big.add_trial(finished(spec, 2, 20, attrs={}))  # complete: no reached / steps_to_target
    big.add_trial(finished(spec, 3, 20, attrs={"reached": True}))  # reached: no steps
    big.add_trial(finished(spec, 4, 25, state=TrialState.PRUNED, attrs={}))  # pruned, no attrs

    for cmd in (["curve", "--n-boot", "20"], ["edges"], ["sensitivity"],
                ["report", "--out", str(tmp_path / "r"), "--n-boot", "20", "--no-dashboard"]):
        code, out, err = run_cli([cmd[0], str(spec_file), "--storage", url, *cmd[1:]], capsys)
        assert code in (0, 1, 3) and "Traceback" not in err, (cmd, err)
        warnings = err.strip().splitlines()
        skips = [w for w in warnings if "skipping study" in w]
        assert len(skips) == 2, err
        assert any(study_name(spec, 256) in w and "batch_size" in w for w in skips)
        assert any(study_name(spec, 1024) in w and "incomplete" in w for w in skips)
        assert [w for w in warnings if "without their result attrs" in w and
                study_name(spec, 512) in w and "left out 2" in w], err
    code, out, _ = run_cli(["curve", "hard", "--storage", url, "--format", "json",
                            "--n-boot", "0"], capsys)
    obj = json.loads(out)
    assert [p["batch_size"] for p in obj["points"]] == [16, 64, 512]
    assert obj["points"][2]["n_trials"] == 3 and obj["points"][2]["best_steps"] == 30
    # nothing complete at all: one line, exit 2
    only = f"sqlite:///{tmp_path / 'only.db'}"
    optuna.create_study(storage=open_storage(only), study_name="x").set_user_attr("spec_name",
                                                                                  "hard")
    code, _, err = run_cli(["curve", "hard", "--storage", only], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no complete studies" in err


def test_a_spec_file_edited_since_its_studies_were_stored_is_refused(
    spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_mod.load(spec_file)
    url = f"sqlite:///{tmp_path / 'edit.db'}"
    for b, steps in ((16, [300, 200]), (64, [90, 80]), (256, [40, 30])):
        fill(make_study(url, spec, b), spec, steps)
    spec_file.write_text(SPEC.replace("value = 0.12", "value = 0.05"))
    for cmd in ("curve", "edges", "sensitivity"):
        code, out, err = run_cli([cmd, str(spec_file), "--storage", url], capsys)
        assert code == 2 and out == "", (cmd, out)
        [line] = err.strip().splitlines()
        assert line.startswith(f"error: {spec_file}: target: differs from the stored study")
    code, _, err = run_cli(["report", str(spec_file), "--storage", url, "--out",
                            str(tmp_path / "r")], capsys)
    assert code == 2 and not (tmp_path / "r").exists()
    # by its stored name there is nothing to compare: the stored studies are shown
    assert run_cli(["curve", "hard", "--storage", url, "--n-boot", "0"], capsys)[0] == 0
    # the unchanged file is accepted again (the batch-size list and trial count may change)
    spec_file.write_text(SPEC.replace("trials = 4", "trials = 6"))
    assert run_cli(["curve", str(spec_file), "--storage", url, "--n-boot", "0"], capsys)[0] == 0


def test_verdict_tells_not_run_from_not_reached(
    spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_mod.load(spec_file)
    url = f"sqlite:///{tmp_path / 'v.db'}"
    fill(make_study(url, spec, 16), spec, [300, 200])
    fill(make_study(url, spec, 64), spec, [None, None])  # run, none reached
    make_study(url, spec, 256)  # a study, no finished trial; 1024: no study at all
    s = load(open_storage(url), "hard")
    v = verdict(s, [])
    assert v.not_run == [256, 1024] and v.not_reached == [64] and v.missing == [64, 256, 1024]
    code, _, err = run_cli(["report", "hard", "--storage", url, "--out", str(tmp_path / "r"),
                            "--n-boot", "0", "--no-dashboard"], capsys)
    assert code == 0, err
    page = (tmp_path / "r" / "index.html").read_text()
    assert "not run (in the spec, no finished trial stored): B = [256, 1024]" in page
    assert "no trial reached the target: B = [64]" in page
    assert "missing (no trial reached the target)" not in page
    # one batch size reached: no fit, and the verdict says so
    assert "fit unreliable: no fit: fewer than 3 batch sizes reached the target" in page


def test_a_fit_on_three_batch_sizes_is_flagged_unreliable(
    spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_mod.load(spec_file)
    url = f"sqlite:///{tmp_path / 'f.db'}"
    # one reached trial of four at B=1024: resamples without it have 2 batch sizes, no fit
    for b, steps in ((16, [400, 300, 350, 380]), (64, [100, 90, 120, 95]),
                     (256, [40, 30, 35, 45]), (1024, [None, None, None, 28])):
        fill(make_study(url, spec, b), spec, steps)
    code, out, err = run_cli(["curve", "hard", "--storage", url, "--format", "json",
                              "--n-boot", "40"], capsys)
    assert code == 0, err
    fit = json.loads(out)["fit"]
    assert fit["n_points"] == 4 and fit["n_boot_requested"] == 40
    dropped = fit["boot_dropped"]
    assert dropped.get("fewer than 3 batch sizes reached the target", 0) == 0  # 3 always reach
    assert fit["n_boot"] + sum(dropped.values()) == 40
    # three batch sizes: flagged, in the JSON and in the table's fit line
    url3 = f"sqlite:///{tmp_path / 'f3.db'}"
    for b, steps in ((16, [400, 300]), (64, [None, 90]), (256, [None, 30])):
        fill(make_study(url3, spec, b), spec, steps)
    code, out, err = run_cli(["curve", "hard", "--storage", url3, "--format", "json",
                              "--n-boot", "40"], capsys)
    obj = json.loads(out)
    assert obj["reliable"] is False and obj["fit"]["reliable"] is False
    assert "only 3 batch sizes reached the target (fewer than 4)" in obj["unreliable_because"]
    dropped = obj["fit"]["boot_dropped"]
    assert dropped["fewer than 3 batch sizes reached the target"] > 0
    assert obj["fit"]["n_boot"] + sum(dropped.values()) == 40
    code, out, _ = run_cli(["curve", "hard", "--storage", url3, "--n-boot", "40"], capsys)
    title = out.splitlines()[0]
    assert "UNRELIABLE: only 3 batch sizes" in title and "of 40 resamples usable" in title
    assert "dropped:" in title
    # the report's verdict box (the page itself: test_verdict_tells_not_run_from_not_reached)
    s = load(open_storage(url3), "hard")
    v = verdict(s, [], spec_curve(s, n_boot=40))
    # (two trials per batch size cannot put 3 in the good region: all three under-tuned)
    assert v.fit_problems == ["only 3 batch sizes reached the target (fewer than 4)",
                              "under-tuned at B = 16, 64, 256"]
    assert [u.split(":")[0] for u in v.under_tuned] == [
        f"under-tuned at B = {b}" for b in (16, 64, 256)]


def test_a_bootstrap_interval_over_100x_is_flagged() -> None:
    # B_noise far outside the batch sizes (all in perfect scaling), steps noisy: the curve's
    # bend, hence B_crit, is not pinned down
    base = {16: 6400, 32: 3200, 64: 1600, 128: 800, 256: 400}
    trials = {b: [TrialRecord(i, "reached", {}, int(s * f))
                  for i, f in enumerate((1.0, 1.3, 1.8, 2.5))] for b, s in base.items()}
    f = fit_with_bootstrap(trials, n_boot=100, seed=0)
    assert f is not None
    lo, hi = f.ci95["b_crit"]
    print(f"b_crit {f.b_crit:.3g} in [{lo:.3g}, {hi:.3g}]; {f.unreliable_because}")
    assert hi / lo > 100 and not f.reliable
    assert any("interval of B_crit spans" in w for w in f.unreliable_because)
    assert f.n_boot + sum(f.boot_dropped.values()) == 100
    # a bend well inside the batch sizes pins B_crit down: reliable
    good = {b: [TrialRecord(i, "reached", {}, int(120 * (1 + 900 / b) * f))
                for i, f in enumerate((1.0, 1.05, 1.1, 1.2))]
            for b in (2 ** k for k in range(4, 15))}
    g = fit_with_bootstrap(good, n_boot=100, seed=0)
    assert g is not None and g.reliable and g.to_json()["unreliable_because"] is None
