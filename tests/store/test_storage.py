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

from conftest import SMALL_DIGITS, SMALL_NQM, run_cli, write

TUNER = [sys.executable, "-m", "tuner.cli"]
ROOT = Path(__file__).parents[2]

# A tiny NQM spec: real, closed-form trials (milliseconds each), two batch sizes.
NQM = (SMALL_NQM.replace("trials = 12", "trials = 3").replace("dimensions = 1000",
                                                              "dimensions = 100")
       .replace("max_steps = 100_000_000", "max_steps = 1_000_000"))


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


def tmpfs(d: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``d`` (root only), unmounted afterwards."""
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of our own, to remount read-only."""
    yield from tmpfs(tmp_path / "mnt", "4m")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, to fill."""
    yield from tmpfs(tmp_path / "small", "1m")


def remount(d: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(d)], check=True)


# --- defect 3: workers started at once on an empty storage -------------------------------------

# Imported once, then forked into N real processes that open the storage at the same moment:
# without the schema lock most of them fail (alembic_version / CREATE TYPE unique violations).
OPEN_AT_ONCE = """\
import os, sys, time, traceback
import alembic.migration, optuna.storages._rdb.models, sqlalchemy.dialects.sqlite
from tuner.store.storage import open_storage
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


# --- defect 6: analysis without write access ---------------------------------------------------

def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file of ``folder``: its digest and mtime."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


def journal_mode(db: Path) -> str:
    uri = f"file:{db}?mode=ro" + ("" if os.access(db.parent, os.W_OK) else "&immutable=1")
    with sqlite3.connect(uri, uri=True) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def analyse(spec: Path, url: str, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every analysis command succeeds on ``url``; report with attachments says it skipped them."""
    for args in (["curve", "--n-boot", "20"], ["edges"], ["sensitivity"],
                 ["report", "--no-dashboard", "--n-boot", "20", "--out", str(out / "a")]):
        code, stdout, err = run_cli([args[0], str(spec), "--storage", url, *args[1:]], capsys)
        assert code in ((0, 1, 3) if args[0] == "edges" else (0,)), err  # 3: under-tuned
        assert "error" not in err and "Traceback" not in err, err
        assert stdout.strip()
    assert (out / "a" / "index.html").is_file()


def study(spec: Path, url: str) -> None:
    """Run the tiny study ``spec`` into ``url``, in its own process (closing every file)."""
    r = subprocess.run([*TUNER, "run", str(spec), "--storage", url, "-q"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_analysis_on_a_read_only_file_system(mount_point: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, NQM, "nqm.toml")
    db = mount_point / "ro.db"
    study(spec, f"sqlite:///{db}")
    remount(mount_point, "ro")
    before, mode = snapshot(mount_point), journal_mode(db)
    analyse(spec, f"sqlite:///{db}", tmp_path, capsys)
    code, _, err = run_cli(["curve", str(spec), "--storage",
                            f"sqlite:///file:{db}?mode=ro&uri=true", "--n-boot", "20"], capsys)
    assert code == 0 and "nqm" in _, err
    code, _, err = run_cli(["report", str(spec), "--storage", f"sqlite:///{db}", "--n-boot",
                            "20", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert "skipped the optuna-dashboard attachments" in err and "--no-dashboard" in err, err
    assert (tmp_path / "b" / "index.html").is_file()
    assert snapshot(mount_point) == before and journal_mode(db) == mode


@pytest.mark.slow
def test_analysis_leaves_a_rollback_journal_file_alone(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, NQM, "nqm.toml")
    folder = tmp_path / "db"
    folder.mkdir()
    db = folder / "j.db"
    study(spec, f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    before = snapshot(folder)
    analyse(spec, f"sqlite:///{db}", tmp_path, capsys)
    assert journal_mode(db) == "delete"
    assert snapshot(folder) == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_a_read_only_file(mount_point: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, NQM, "nqm.toml")
    db = mount_point / "d.db"
    study(spec, f"sqlite:///{db}")
    remount(mount_point, "ro")
    before = snapshot(mount_point)
    port = free_port()
    p = subprocess.Popen([*TUNER, "dashboard", "--storage", f"sqlite:///{db}", "--port",
                          str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = None
        for _ in range(600):
            assert p.poll() is None, p.communicate()[1][-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None and "nqm.B16" in body, body
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert "(read-only)" in err and "Traceback" not in err, err
    assert snapshot(mount_point) == before


# --- defect 8: outages and a full disk ---------------------------------------------------------

# Every trial runs its whole budget (the target is out of reach): seconds long.
SLOW_DIGITS = SMALL_DIGITS.replace("value = 0.12", "value = 0.001").replace(
    "max_steps = 400", "max_steps = 800")
PG = ROOT / "scripts" / "postgres.sh"


def pg(cmd: str, folder: str, port: int) -> str:
    r = subprocess.run(["bash", str(PG), cmd, folder, str(port)], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"postgres.sh {cmd}: {r.stderr[-1000:]}")
    return r.stdout.strip()


def up_again(folder: str, port: int) -> None:
    """Start the server unless it runs (for the next test, whatever happened)."""
    status = subprocess.run(["runuser", "-u", "postgres", "--", *pg_ctl(), "-D",
                             f"{folder}/data", "status"], capture_output=True)
    if status.returncode != 0:
        pg("start", folder, port)


def pg_ctl() -> list[str]:
    return [sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1].as_posix()]


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[tuple[str, int, str]]:
    """A PostgreSQL server of this module's own, which its tests stop and start again:
    (folder, port, base URL)."""
    folder = tempfile.mkdtemp(prefix="tuner-pg-outage-")
    port = free_port()
    try:
        url = pg("start", folder, port)
    except RuntimeError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server could be started by {PG.name}: {exc}")
    try:
        yield folder, port, url
    finally:
        subprocess.run(["bash", str(PG), "stop", folder], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(base: str) -> str:
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(base)
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database,
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return u.set(database=name).render_as_string(hide_password=False)


def wait_for_training(url: str, proc: subprocess.Popen) -> None:
    """Until a trial of ``url`` has reported an intermediate value (it is training)."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    for _ in range(1200):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            with psycopg.connect(host=u.host, port=u.port, user=u.username,
                                 dbname=u.database) as conn:
                n = conn.execute("SELECT count(*) FROM trial_intermediate_values").fetchone()[0]
            if n:
                return
        except psycopg.Error:  # the schema is not there yet
            pass
        time.sleep(0.1)
    raise AssertionError("no trial started training")


@pytest.mark.slow
def test_a_run_rides_out_a_short_postgresql_outage(tmp_path: Path,
                                                   own_postgres: tuple[str, int, str]) -> None:
    folder, port, base = own_postgres
    url = fresh_database(base)
    spec = write(tmp_path, SLOW_DIGITS, "slow.toml")
    p = subprocess.Popen([*TUNER, "run", str(spec), "--storage", url, "-b", "16", "-n", "2",
                          "--heartbeat", "1", "-q", "--storage-retry", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_training(url, p)
        pg("stop", folder, port)
        time.sleep(3)
        pg("start", folder, port)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
        up_again(folder, port)
    assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert finished_counts(url) == {16: [0, 1]}


@pytest.mark.slow
def test_a_long_outage_stops_a_run_with_one_line(tmp_path: Path,
                                                 own_postgres: tuple[str, int, str]) -> None:
    folder, port, base = own_postgres
    url = fresh_database(base)
    spec = write(tmp_path, SLOW_DIGITS, "slow.toml")
    p = subprocess.Popen([*TUNER, "run", str(spec), "--storage", url, "-b", "16", "-n", "2",
                          "--heartbeat", "1", "-q", "--storage-retry", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_training(url, p)
        pg("stop", folder, port)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
        up_again(folder, port)
    lines = [x for x in err.splitlines() if x.strip()]
    assert p.returncode == 1, err[-3000:]
    assert "Traceback" not in err and len(lines) <= 3, err[-3000:]  # storage:, retrying, error
    assert lines[-1].startswith("error: storage postgresql+psycopg://tuner@127.0.0.1:"), lines
    assert "--storage-retry" in lines[-1], lines


def test_a_full_disk_is_one_line_and_the_database_intact(small_disk: Path, tmp_path: Path
                                                         ) -> None:
    spec = write(tmp_path, NQM.replace("trials = 3", "trials = 100000"), "many.toml")
    url = f"sqlite:///{small_disk / 'full.db'}"
    r = subprocess.run([*TUNER, "run", str(spec), "--storage", url, "-b", "16", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    line = one_line(r.stderr.replace(f"storage: {url}\n", ""))
    assert url in line and "database or disk is full" in line, line
    with sqlite3.connect(small_disk / "full.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    study = optuna.load_study(study_name="many.B16.seed0", storage=url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) > 0


# --- bad storage input: one line, exit 2, nothing created --------------------------------------

def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_cli(args, capsys)
    assert code == 2, (code, out, err)
    return one_line(err)


@pytest.fixture
def nqm(tmp_path: Path) -> Path:
    return write(tmp_path, NQM, "nqm.toml")


def test_storage_naming_a_folder(nqm: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    line = refused(["run", str(nqm), "--storage", f"sqlite:///{folder}"], capsys)
    assert "is a folder" in line, line
    assert not list(folder.iterdir())


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + bytes(200), b"just some notes\n"])
def test_storage_naming_a_file_that_is_not_a_database(content: bytes, nqm: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    f = tmp_path / "notes.db"
    f.write_bytes(content)
    for cmd in ("run", "curve"):
        line = refused([cmd, str(nqm), "--storage", f"sqlite:///{f}"], capsys)
        assert "is not a SQLite database" in line, line
    assert f.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db", "nqm.toml"]


def test_storage_in_an_unwritable_location(nqm: Path, mount_point: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    remount(mount_point, "ro")
    line = refused(["run", str(nqm), "--storage", f"sqlite:///{mount_point / 'new.db'}"], capsys)
    assert "not writable" in line, line
    assert not list(mount_point.iterdir())


def test_storage_on_a_refused_postgresql_connection(nqm: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql+psycopg://tuner@127.0.0.1:{free_port()}/tuner"  # nothing listens there
    line = refused(["run", str(nqm), "--storage", url], capsys)
    assert "cannot open" in line and "127.0.0.1" in line, line


def test_an_empty_storage_option(nqm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    line = refused(["run", str(nqm), "--storage", ""], capsys)
    assert "--storage: empty" in line, line
    assert not (tmp_path / "results").exists()


def dashboard(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*TUNER, "dashboard", *args], capture_output=True, text=True,
                          timeout=120)


def test_dashboard_does_not_create_a_storage(tmp_path: Path) -> None:
    r = dashboard(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--port", str(free_port())])
    assert r.returncode == 2 and "no SQLite file" in one_line(r.stderr), r.stderr
    assert not list(tmp_path.iterdir())


def test_dashboard_on_a_bad_or_busy_port(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="x")
    before = snapshot(tmp_path)
    r = dashboard(["--storage", f"sqlite:///{db}", "--port", "70000"])
    assert r.returncode == 2 and "--port" in one_line(r.stderr), r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = dashboard(["--storage", f"sqlite:///{db}", "--port", str(busy.getsockname()[1])])
    assert r.returncode == 2 and "cannot listen" in one_line(r.stderr), r.stderr
    assert snapshot(tmp_path) == before
