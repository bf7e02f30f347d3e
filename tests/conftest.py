"""Shared test helpers: small real specs on the digits data, and the CLI entry point in-process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# A small, fast digits study: real training, a loose target, a short budget.
SMALL_DIGITS = """\
seed = 0
batch_sizes = [16, 128]
trials = 4

[workload]
name = "digits"
hidden = [32]

[optimizer]
name = "momentum"

[search_space]
learning_rate = { low = 0.01, high = 1.0, log = true }
one_minus_momentum = { low = 0.01, high = 0.5, log = true }

[target]
metric = "error"
value = 0.12

[budget]
max_steps = 400

[eval]
first_step = 5
relative = 0.05
min_interval = 5
"""


#: Trial user attrs every finished trial carries (tuner/run/objective.py).
TRIAL_ATTRS = {"reached", "steps_to_target", "diverged", "stopped_at_step", "examples_seen",
               "wall_seconds", "best_metric", "seed"}


# A small NQM study: real, closed-form trials (milliseconds each) on the buffered path.
SMALL_NQM = """\
batch_sizes = [16, 1024]
trials = 12

[workload]
name = "nqm"
dimensions = 1000

[optimizer]
name = "momentum"

[search_space]
learning_rate = { low = 1e-4, high = 10.0, log = true }
one_minus_momentum = { low = 1e-3, high = 1.0, log = true }

[target]
metric = "loss"
value = 0.01

[budget]
max_steps = 100_000_000

[eval]
first_step = 1
relative = 1.0
min_interval = 1

[pruner]
name = "none"
lossless = false
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    """Write a spec file and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``tuner ARGS`` through the console-script entry point; (exit status, stdout, stderr)."""
    from tuner.cli import main

    old = sys.argv
    sys.argv = ["tuner", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small_spec(tmp_path: Path) -> Path:
    """Path of a small digits spec in a temp folder."""
    return write(tmp_path, SMALL_DIGITS, "small_digits.toml")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server on loopback, started by scripts/postgres.sh (the project's own
    script, which installs Debian's postgresql where missing); yields its base URL."""
    import shutil
    import socket
    import subprocess
    import tempfile

    script = Path(__file__).parents[1] / "scripts" / "postgres.sh"
    folder = tempfile.mkdtemp(prefix="tuner-pg-")  # not under pytest's 0700 tmp: postgres reads it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = subprocess.run(["bash", str(script), "start", folder, str(port)],
                             capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        last = (started.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"no PostgreSQL server could be started by {script.name}: {last}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "stop", folder], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the test server, for one test."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(postgres_server)
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database,
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return u.set(database=name).render_as_string(hide_password=False)


def report_page(specs: list[Path], url: str, out: Path,
                capsys: pytest.CaptureFixture[str]) -> str:
    """``tuner report SPECS`` (no bootstrap, no dashboard attachments) and its page's HTML."""
    code, _, err = run_cli(["report", *map(str, specs), "--storage", url, "--out", str(out),
                            "--n-boot", "0", "--no-dashboard"], capsys)
    assert code == 0, err
    return (out / "index.html").read_text()
