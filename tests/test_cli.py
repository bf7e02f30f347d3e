"""CLI surface: help, version, the dashboard on the same storage."""

from __future__ import annotations

import gc
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import SMALL_DIGITS, run_cli, write


def test_group_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "run" in out and "dashboard" in out


def test_unknown_option_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", "x.toml", "--trails", "3"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--trails" in err


def test_dashboard_serves_the_storage(small_spec: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    assert run_cli(["run", str(small_spec), "--storage", url, "-n", "1", "-q", "-b", "16"],
                   capsys)[0] == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tuner.cli import main; main()", "dashboard", "--storage",
         url, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=1) as r:
                    body = json.load(r)
                break
            except OSError:
                time.sleep(0.2)
        assert body is not None, "dashboard did not answer"
        [study] = body["study_summaries"]
        assert study["study_name"] == "small_digits.B16.seed0"
        # the study's page: our study attrs, trial attrs and learning curves at global steps
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/"
                                    f"{study['study_id']}", timeout=30) as r:
            detail = json.load(r)
        study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
        assert study_attrs["batch_size"] == "16" and study_attrs["spec_name"] == "small_digits"
        [trial] = detail["trials"]
        trial_attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {"reached", "steps_to_target", "stopped_at_step", "seed"} <= trial_attrs.keys()
        steps = [v["step"] for v in trial["intermediate_values"]]
        assert steps and steps[0] == 5 and steps[-1] == int(trial_attrs["stopped_at_step"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def one_line_exit_2(code: int, out: str, err: str, *fragments: str) -> None:
    """The bad-input contract: exit 2, nothing on stdout, one line on stderr with ``fragments``."""
    assert code == 2, err
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.mark.parametrize("args", [["run", "SPEC", "--seed", "-1"],
                                  ["run", "SPEC", "--seed", "4294967296"],
                                  ["curve", "SPEC", "--seed", "-1"],
                                  ["sensitivity", "SPEC", "--seed", "4294967296"]])
def test_seed_option_out_of_range(args: list[str], small_spec: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "x.db"
    args = [str(small_spec) if a == "SPEC" else a for a in args]
    one_line_exit_2(*run_cli([*args, "--storage", f"sqlite:///{db}"], capsys), "--seed",
                    "0<=x<=4294967295")
    assert not db.exists()


needs_no_gpu = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")


@needs_no_gpu
@pytest.mark.parametrize("accelerator", ["cuda", "gpu"])
def test_accelerator_not_on_this_machine(accelerator: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SMALL_DIGITS + f"[trainer]\naccelerator = '{accelerator}'\n")
    db = tmp_path / "x.db"
    one_line_exit_2(*run_cli(["run", str(path), "--storage", f"sqlite:///{db}"], capsys),
                    f"{path}: trainer.accelerator: '{accelerator}'", "no CUDA GPU",
                    "allowed here: auto, cpu")
    assert not db.exists()


@needs_no_gpu
@pytest.mark.parametrize("extra", [[], ["--workers", "2"]])
def test_gpus_option_without_a_gpu(extra: list[str], small_spec: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "x.db"
    one_line_exit_2(*run_cli(["run", str(small_spec), "--storage", f"sqlite:///{db}", "--gpus",
                              "0", *extra], capsys), "--gpus 0: this machine has no CUDA GPU")
    assert not db.exists()


# (spec text, extra run arguments, fragments of the message)
TOO_LARGE = {
    "batch_size": (SMALL_DIGITS.replace("[16, 128]", "[16, 100000000000]"),
                   ["-b", "100000000000"], ["batch size 100000000000 needs about", "--allow-large"]),
    "model": (SMALL_DIGITS.replace("hidden = [32]", "hidden = [1000000000]"), ["-b", "16"],
              ["batch size 16 needs about", "TB", "--allow-large"]),
    "nqm_dimensions": (Path("studies/nqm_sgd.toml").read_text().replace(
        "precondition_power = 0.0", "precondition_power = 0.0\ndimensions = 100000000000"),
        ["-b", "4"], ["workload 'nqm' at batch size 4 needs about 51.2 TB"]),
    "evaluations": (SMALL_DIGITS.replace("max_steps = 400", "max_steps = 1000000000")
                    .replace("relative = 0.05", "relative = 0.0")
                    .replace("min_interval = 5", "min_interval = 1"), ["-b", "16"],
                    ["eval: more than 10000 evaluations per trial at batch size 16",
                     "--allow-large"]),
}


@pytest.mark.parametrize("case", sorted(TOO_LARGE))
def test_trials_too_large_for_this_machine(case: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    text, extra, fragments = TOO_LARGE[case]
    path = write(tmp_path, text)
    db = tmp_path / "x.db"
    one_line_exit_2(*run_cli(["run", str(path), "--storage", f"sqlite:///{db}", *extra],
                             capsys), str(path), *fragments)
    assert not db.exists()


def test_allow_large_runs_a_refused_cadence(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # every step evaluated for 20,000 steps: refused, unless asked for; the target is met early
    text = SMALL_DIGITS.replace("max_steps = 400", "max_steps = 20000").replace(
        "relative = 0.05", "relative = 0.0").replace("min_interval = 5", "min_interval = 1")
    path = write(tmp_path, text)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    args = ["run", str(path), "--storage", url, "-b", "128", "-n", "1", "-q"]
    one_line_exit_2(*run_cli(args, capsys), "more than 10000 evaluations")
    code, out, err = run_cli([*args, "--allow-large"], capsys)
    assert code == 0, err
    assert "128" in out


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(spec, SQLite file) with one finished trial at B=16, for the analysis commands."""
    folder = tmp_path_factory.mktemp("stored")
    spec = write(folder, SMALL_DIGITS, "small.toml")
    db = folder / "s.db"
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(spec), "--storage",
                           f"sqlite:///{db}", "-n", "1", "-b", "16", "-q"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return spec, db


def _bad_outputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """(the command's output arguments, a fragment of the message) per kind of bad path."""
    a_file = tmp_path / "plain.txt"
    long = "a" * 300
    return {
        "plot_missing_folder": (["curve", "--plot", str(tmp_path / "nope" / "s.png")],
                                "does not exist"),
        "plot_folder_is_a_file": (["curve", "--plot", str(a_file / "s.png")], "is a file"),
        "plot_name_too_long": (["curve", "--plot", str(tmp_path / f"{long}.png")],
                               "File name too long"),
        "lr_plot_missing_folder": (["curve", "--lr-plot", str(tmp_path / "nope" / "lr.png")],
                                   "does not exist"),
        "plots_missing_parent": (["sensitivity", "--plots", str(tmp_path / "nope" / "p")],
                                 "does not exist"),
        "plots_name_too_long": (["sensitivity", "--plots", str(tmp_path / long)],
                                "File name too long"),
        "out_missing_parent": (["report", "--out", str(tmp_path / "nope" / "r")],
                               "does not exist"),
        "out_under_a_file": (["report", "--out", str(a_file / "r")], "is a file"),
    }


@pytest.mark.parametrize("case", sorted(_bad_outputs(Path("."))))
def test_bad_output_path_is_refused_before_any_work(case: str, stored: tuple[Path, Path],
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec, db = stored
    before = db.read_bytes()
    (tmp_path / "plain.txt").write_text("x")
    args, fragment = _bad_outputs(tmp_path)[case]
    option = args[1]
    code, out, err = run_cli([args[0], str(spec), "--storage", f"sqlite:///{db}", *args[1:]],
                             capsys)
    one_line_exit_2(code, out, err, f"error: {option} ", fragment, "allowed:")
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]


def test_good_output_paths_are_written(stored: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec, db = stored
    code, out, err = run_cli(["curve", str(spec), "--storage", f"sqlite:///{db}", "--n-boot",
                              "10", "--plot", str(tmp_path / "s.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


#: A process that prints, after tuner's own at-exit handler ran, how many objects it froze
#: (handlers run last-registered first, and this one is registered before main()).
FREEZE_PROBE = ("import atexit, gc\n"
                "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
                "from tuner.cli import main\nmain()")


@pytest.mark.parametrize("case", ["ok", "bad input"])
def test_teardown_is_frozen_at_exit_only(case: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The console script freezes its objects as the process ends (the interpreter's
    teardown then skips re-scanning them), whatever the exit status; main() called in a
    process that goes on (as here) freezes nothing."""
    args = ["edges", "--help"] if case == "ok" else ["edges", str(tmp_path / "missing.toml")]
    p = subprocess.run([sys.executable, "-c", FREEZE_PROBE, *args], capture_output=True,
                       text=True)
    assert p.returncode == (0 if case == "ok" else 2), p.stderr
    frozen = int(p.stdout.splitlines()[-1].removeprefix("frozen "))
    assert frozen > 10_000  # every module's objects, not a few
    assert (run_cli(args, capsys)[0] == 0) == (case == "ok")
    assert gc.get_freeze_count() == 0
