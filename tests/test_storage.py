"""The storage: workers opening an empty one at once, read-only analysis, outages, a full disk,
and bad storage input. Real processes, real SQLite files, a real PostgreSQL server."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import SMALL_DIGITS, run_cli, write

TUNER = [sys.executable, "-m", "tuner.cli"]
ROOT = Path(__file__).parents[1]

# A tiny NQM spec: real, closed-form trials (milliseconds each), two batch sizes.
NQM = """\
batch_sizes = [16, 1024]
trials = 3

[workload]
name = "nqm"
dimensions = 100

[optimizer]
name = "momentum"

[search_space]
learning_rate = { low = 1e-4, high = 10.0, log = true }
one_minus_momentum = { low = 1e-3, high = 1.0, log = true }

[target]
metric = "loss"
value = 0.01

[budget]
max_steps = 1_000_000

[eval]
first_step = 1
relative = 1.0
min_interval = 1

[pruner]
name = "none"
lossless = false
"""


def one_line(err: str) -> str:
    """The single stderr line of a refused command (and no traceback)."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def finished_counts(url: str) -> dict[int, list[int]]:
    """Per batch size, the sorted slots of the finished trials (and none left RUNNING/WAITING)."""
    out = {}
    for s in optuna.get_all_study_summaries(url):
        trials = optuna.load_study(study_name=s.study_name, storage=url).get_trials()
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        out[s.user_attrs["batch_size"]] = sorted(
            t.user_attrs["slot"] for t in trials if t.state in (TrialState.COMPLETE,
                                                                TrialState.PRUNED))
    return out


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of our own (root only), unmounted afterwards."""
    d = tmp_path / "mnt"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def remount(d: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(d)], check=True)


# --- defect 3: workers started at once on an empty storage -------------------------------------

# Imported once, then forked into N real processes that open the storage at the same moment:
# without the schema lock most of them fail (alembic_version / CREATE TYPE unique violations).
OPEN_AT_ONCE = """\
import os, sys, time, traceback
import alembic.migration, optuna.storages._rdb.models, sqlalchemy.dialects.sqlite
from tuner.storage import open_storage
url, n, go = sys.argv[1], int(sys.argv[2]), time.monotonic() + 0.5
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        while time.monotonic() < go:
            pass
        try:
            open_storage(url, 30).get_all_studies()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    kids.append(pid)
failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in kids)
print(f"{failed} of {n} failed")
sys.exit(1 if failed else 0)
"""


def open_together(url: str, n: int = 8) -> subprocess.CompletedProcess:
    """``n`` processes open the (empty) storage ``url`` at the same moment."""
    return subprocess.run([sys.executable, "-c", OPEN_AT_ONCE, url, str(n)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_workers_create_the_sqlite_schema_together(tmp_path: Path) -> None:
    for round_ in range(2):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        r = open_together(url)
        assert r.returncode == 0, r.stdout + r.stderr[-1500:]


@pytest.mark.slow
def test_workers_create_the_postgresql_schema_together(tmp_path: Path, postgres_server: str
                                                       ) -> None:
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(postgres_server)
    for _ in range(2):
        name = f"race_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database,
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = u.set(database=name).render_as_string(hide_password=False)
        r = open_together(url)
        assert r.returncode == 0, r.stdout + r.stderr[-1500:]
