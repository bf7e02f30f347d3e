"""``tuner local-cbs`` on the NQM (exact) and on digits (the tensor path), stored; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from conftest import SMALL_NQM, run_cli, write
from tuner.core.branching import Branch, local_cbs


def stored(url: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=url).user_attrs.get("local_cbs", [])


def test_nqm_local_cbs_from_the_best_trial_is_stored_with_a_plot(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, SMALL_NQM, "small_nqm.toml")
    url = f"sqlite:///{tmp_path / 'n.db'}"
    assert run_cli(["run", str(spec), "--storage", url, "-q"], capsys)[0] == 0
    png = tmp_path / "l.png"
    code, out, err = run_cli(["local-cbs", str(spec), "-b", "16", "--factors", "2,4,8",
                              "--points", "4", "--tolerance", "0.02", "--storage", url,
                              "--format", "json", "--plot", str(png)], capsys)
    assert code == 0, err
    r = json.loads(out)
    best = optuna.load_study(study_name="small_nqm.B16.seed0", storage=url).best_trial
    assert r["params"]["learning_rate"] == best.params["learning_rate"]
    assert r["stored_in"] == "small_nqm.B16.seed0" and r["tolerance"] == 0.02
    steps = best.user_attrs["steps_to_target"]
    assert r["horizon"] % 8 == 0 and r["horizon"] >= steps // 10
    assert [c["step"] for c in r["checkpoints"]][0] == 0 and len(r["checkpoints"]) == 4
    assert r["checkpoints"][-1]["step"] == steps - r["horizon"]
    for c in r["checkpoints"]:
        assert [b["batch_size"] for b in c["branches"]] == [32, 64, 128]
        assert [b["steps"] for b in c["branches"]] == [r["horizon"] // k for k in (2, 4, 8)]
        br = [Branch(**b) for b in c["branches"]]
        assert c["local_cbs"] == local_cbs(16, c["reference_loss"], br, 0.02)
        assert c["reference_loss"] < c["loss"]  # the reference improves over its horizon
    assert png.read_bytes()[:4] == b"\x89PNG"
    (run,) = stored(url, "small_nqm.B16.seed0")
    assert run == {k: v for k, v in r.items() if k not in ("spec", "stored_in")}
    # a second measurement is appended; --no-store prints only
    assert run_cli(["local-cbs", str(spec), "-b", "16", "--factors", "2", "--storage", url],
                   capsys)[0] == 0
    assert run_cli(["local-cbs", str(spec), "-b", "16", "--factors", "2", "--storage", url,
                    "--no-store"], capsys)[0] == 0
    assert len(stored(url, "small_nqm.B16.seed0")) == 2


def test_digits_branches_leave_the_reference_run_undisturbed(
        small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tensor path: branches start from the reference's state and put it back, so the
    reference's losses do not depend on which branches were taken."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    sets = ["--set", "learning_rate=0.1", "--set", "one_minus_momentum=0.1"]
    common = ["-b", "16", "--steps", "60", "--points", "3", "--horizon", "8", "--storage",
              url, "--format", "json", *sets]
    code, out, err = run_cli(["local-cbs", str(small_spec), "--factors", "2,4", *common],
                             capsys)
    assert code == 0, err
    a = json.loads(out)
    assert a["stored_in"] is None and a["method"].startswith("trained")
    code, out, _ = run_cli(["local-cbs", str(small_spec), "--factors", "8", *common], capsys)
    b = json.loads(out)
    assert [c["step"] for c in a["checkpoints"]] == [0, 26, 52]
    assert [(c["loss"], c["reference_loss"]) for c in a["checkpoints"]] == \
        [(c["loss"], c["reference_loss"]) for c in b["checkpoints"]]
    for c in a["checkpoints"]:
        assert [x["steps"] for x in c["branches"]] == [4, 2]
        assert [x["learning_rate"] for x in c["branches"]] == pytest.approx([0.2, 0.4])
        assert c["local_cbs"] in (16, 32, 64)


@pytest.mark.parametrize("extra, says", [
    (["--factors", "1,2"], "allowed: comma-separated integers >= 2"),
    (["--horizon", "12", "--factors", "8"], "--horizon 12: every factor must divide it"),
    (["-b", "64"], "give every searched metaparameter with --set"),
    (["--lr-rule", "cubic"], "'cubic' is not one of"),
])
def test_bad_input_is_one_line_and_writes_nothing(
        small_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        extra: list[str], says: str) -> None:
    db = tmp_path / "x.db"
    args = ["local-cbs", str(small_spec), "-b", "16", "--storage", f"sqlite:///{db}", *extra]
    if "-b" in extra:
        args = ["local-cbs", str(small_spec), "--storage", f"sqlite:///{db}", *extra]
    if "--horizon" in extra:
        args += ["--set", "learning_rate=0.1", "--set", "one_minus_momentum=0.1"]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == "" and says in err, err
    assert not db.exists()
