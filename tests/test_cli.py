"""CLI surface: help, version, the dashboard on the same storage."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import run_cli


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
