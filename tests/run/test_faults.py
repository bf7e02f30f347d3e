"""Fault injection (issue 13): real ``tuner run`` processes stopped, killed and interrupted at
chosen moments, on a SQLite file and on a real PostgreSQL server (scripts/postgres.sh).

The contract of the work queue, whatever fails and in which order: every study ends with exactly
N finished trials on N distinct slots, each with its slot's point, nothing WAITING or RUNNING left
behind, and no worker waits forever or crashes.
"""

from __future__ import annotations

import fcntl
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import SMALL_DIGITS, SMALL_NQM, write
from procs import (FINISHED, Worker, check_exact, run, slot_points, studies, trials_of,
                   stop_mid_trial, wait_for, workers)

# Every trial runs its whole (short) budget: the target is out of reach. Under a second a trial.
FAULT = (SMALL_DIGITS.replace("value = 0.12", "value = 0.001")
         .replace("max_steps = 400", "max_steps = 200")
         .replace("first_step = 5", "first_step = 20").replace("min_interval = 5", "min_interval = 20")
         .replace("relative = 0.05", "relative = 0.5"))
# A trial long enough for another worker to start and claim while it runs.
LONG = FAULT.replace("max_steps = 200", "max_steps = 5000")
# A trial that lasts a few polls of the storage (a second or two), to be caught mid-trial.
MID = FAULT.replace("max_steps = 200", "max_steps = 2500")

# The NQM on the buffered path (trials in memory, stored whole): ~30 ms a trial.
NQM = SMALL_NQM.replace("dimensions = 1000", "dimensions = 10000")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage: a SQLite file, or a database on the real PostgreSQL test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'faults.db'}"
    return request.getfixturevalue("postgres_url")


def no_traceback(w: Worker) -> None:
    assert "Traceback" not in w.stderr, w.stderr[-3000:]


# -- Defect 1: a slot that fails twice is re-run again and again -------------------------------

@pytest.mark.slow
def test_interrupted_twice_mid_trial_still_runs_each_slot_once(tmp_path: Path, url: str) -> None:
    spec = write(tmp_path, MID, "fault.toml")
    args = ["run", str(spec), "--storage", url, "-b", "16", "-n", "3"]
    with workers() as started:
        for _ in range(2):  # Ctrl-C while a trial trains; the second time it is slot 0's retry
            w = Worker(args)
            started.append(w)
            stop_mid_trial(url, w)
            w.send(signal.SIGINT)
            w.send(signal.SIGCONT)
            assert w.wait(120) == 130, w.stderr[-2000:]
        last = Worker(args)
        started.append(last)
        assert last.wait(300) == 0, last.stderr[-2000:]
    no_traceback(last)
    [trials] = trials_of(url).values()
    assert sum(t.state == TrialState.FAIL for t in trials) == 2
    check_exact(trials, 3, slot_points(spec, 3))


@pytest.mark.slow
def test_buffered_nqm_interrupted_and_killed_repeatedly_runs_each_slot_once(
        tmp_path: Path, url: str) -> None:
    # ~0.1 s a trial: long enough for a signal sent on a line to land in the next trial
    spec = write(tmp_path, NQM.replace("dimensions = 10000", "dimensions = 50000"), "nqm_f.toml")
    n = 20
    args = ["run", str(spec), "--storage", url, "-b", "16", "-n", str(n)]
    rng = random.Random(13)
    interrupts = 0
    with workers() as started:
        for k in range(5):
            w = Worker(args)
            started.append(w)
            # the first line about a trial: a re-queued retry is the first trial a resumed
            # worker runs, so interrupting right then hits the retry (a slot failing twice)
            line = w.wait_line(lambda s: "re-queued" in s or "/%d (#" % n in s, 60)
            if line is None:  # it finished (or died) without running a trial
                break
            if k % 3 == 2:
                time.sleep(rng.uniform(0, 0.3))
                w.send(signal.SIGKILL)
            else:
                w.send(signal.SIGINT)
            code = w.wait(60)
            assert code in (0, 130, -9), w.stderr[-2000:]
            no_traceback(w)
            interrupts += code != 0
        last = Worker(args)
        started.append(last)
        assert last.wait(300) == 0, last.stderr[-2000:]
    no_traceback(last)
    assert interrupts >= 3
    [trials] = trials_of(url).values()
    check_exact(trials, n, slot_points(spec, n))


# -- Defect 2: a worker killed between ask() and its first heartbeat ---------------------------

CLAIM_WITHOUT_HEARTBEAT = """\
import sys, time
import optuna
url, name = sys.argv[1:3]
study = optuna.load_study(study_name=name, storage=url)
study.enqueue_trial({}, user_attrs={"slot": 1})
trial = study.ask()  # RUNNING, no heartbeat row yet: the worker dies right here
print(trial.number, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_trial_claimed_without_a_heartbeat_is_recovered(tmp_path: Path, url: str) -> None:
    spec = write(tmp_path, FAULT, "fault.toml")
    first = run(["run", str(spec), "--storage", url, "-b", "16", "-n", "1", "-q"])
    assert first.returncode == 0, first.stderr[-2000:]
    [name] = studies(url)
    dead = subprocess.Popen([sys.executable, "-c", CLAIM_WITHOUT_HEARTBEAT, url, name],
                            stdout=subprocess.PIPE, text=True)
    try:
        orphan = int(dead.stdout.readline())
    finally:
        dead.kill()
        dead.wait()
    later = run(["run", str(spec), "--storage", url, "-b", "16", "-n", "2", "--heartbeat", "1"],
                timeout=150)  # TimeoutExpired: it waits forever for the orphan
    assert later.returncode == 0, later.stderr[-2000:]
    [trials] = trials_of(url).values()
    assert trials[orphan].state == TrialState.FAIL
    check_exact(trials, 2, slot_points(spec, 2))


# -- Defect 4: staleness judged by the trial's own heartbeat; a taken trial --------------------

@pytest.mark.slow
def test_a_short_heartbeat_worker_does_not_fail_a_live_trial(tmp_path: Path, url: str) -> None:
    spec = write(tmp_path, LONG, "long.toml")
    n = 3  # B claims at least once more while A trains (A: slot 0, then 1 or 2)
    args = ["run", str(spec), "--storage", url, "-b", "16", "-n", str(n)]
    with workers() as started:
        a = Worker(args)  # --heartbeat 30, the default
        started.append(a)
        # A pauses while B starts (seconds of imports on a busy machine), so that B's claims
        # fall inside A's trial; A's own 30 s heartbeat allows a pause of up to 60 s
        live = stop_mid_trial(url, a)
        try:
            b = Worker([*args, "--heartbeat", "1"])
            started.append(b)
            assert b.wait_line(lambda s: s.startswith("storage: "), 120), b.stderr[-2000:]
        finally:
            a.send(signal.SIGCONT)
        codes = a.wait(400), b.wait(400)
    assert codes == (0, 0), (a.stderr[-2000:], b.stderr[-2000:])
    no_traceback(a)
    no_traceback(b)
    [trials] = trials_of(url).values()
    assert trials[live.number].state in FINISHED  # finished by A, not failed by B
    assert not [t.number for t in trials if t.state == TrialState.FAIL
                and str(t.user_attrs.get("worker")).endswith(f":{a.pid}")]
    check_exact(trials, n, slot_points(spec, n))


@pytest.mark.slow
def test_a_stopped_worker_whose_trial_was_taken_carries_on(tmp_path: Path, url: str) -> None:
    spec = write(tmp_path, MID, "fault.toml")
    n = 4
    args = ["run", str(spec), "--storage", url, "-b", "16", "-n", str(n), "--heartbeat", "2"]
    with workers() as started:
        a = Worker(args)
        started.append(a)
        stopped = stop_mid_trial(url, a)
        try:
            b = Worker(args)
            started.append(b)
            slot = stopped.user_attrs["slot"]

            def rerun() -> bool:  # another trial of the stopped trial's slot has finished
                return any(t.state in FINISHED and t.user_attrs.get("slot") == slot
                           and t.number != stopped.number
                           for ts in trials_of(url).values() for t in ts)

            wait_for(rerun, 300, "the stopped worker's slot re-run by the other", poll=0.5)
        finally:
            a.send(signal.SIGCONT)
        codes = a.wait(300), b.wait(300)
    assert codes == (0, 0), (a.stderr[-2000:], b.stderr[-2000:])
    no_traceback(a)
    no_traceback(b)
    assert len([s for s in a.err if "taken" in s]) == 1, a.stderr[-2000:]
    [trials] = trials_of(url).values()
    check_exact(trials, n, slot_points(spec, n))


# -- Defect 5: a foreign study under one of our names ------------------------------------------

def test_a_foreign_study_under_our_name_is_refused(tmp_path: Path) -> None:
    from tuner.run import specs as spec_mod
    from tuner.store.storage import study_name

    spec = write(tmp_path, FAULT, "fault.toml")
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    name = study_name(spec_mod.load(str(spec)), 16)
    foreign = optuna.create_study(storage=url, study_name=name)
    foreign.set_user_attr("owner", "someone else")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)

    def snapshot() -> dict:
        return {n: (s.user_attrs,
                    [(t.state, t.params, t.user_attrs, t.system_attrs) for t in s.get_trials()])
                for n, s in studies(url).items()}

    before = snapshot()
    r = run(["run", str(spec), "--storage", url, "-n", "1"], timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and name in r.stderr, r.stderr
    assert snapshot() == before


# -- Defect 7: Ctrl-C during a claim; a dead worker's re-queued trial --------------------------

def hold_study_lock(url: str, name: str, pid: int):  # noqa: ANN201 - a context manager
    """Take the study's work-queue lock (tuner.store.locking) from the test, as a slow worker would;
    yields a function that says whether another process (``pid`` on SQLite) waits for it."""
    import contextlib

    from tuner.store.locking import lock_key
    from tuner.store.storage import sqlite_file

    @contextlib.contextmanager
    def held():  # noqa: ANN202
        db = sqlite_file(url)
        if db is not None:  # flock on <file>.lock; a blocked flock shows in /proc/locks as "->"
            with open(f"{db}.lock", "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield lambda: any("-> FLOCK" in line and f" {pid} " in line
                                      for line in Path("/proc/locks").read_text().splitlines())
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
            return
        import sqlalchemy as sa

        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        key = lock_key(name)
        with engine.connect() as conn, engine.connect() as probe:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()

            def waiting() -> bool:
                n = probe.execute(sa.text("SELECT count(*) FROM pg_locks WHERE "
                                          "locktype = 'advisory' AND NOT granted AND database = "
                                          "(SELECT oid FROM pg_database WHERE datname = "
                                          "current_database())")).scalar_one()
                probe.commit()
                return n > 0
            try:
                yield waiting
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        engine.dispose()

    return held()


def test_ctrl_c_while_claiming_fails_the_trial_at_once(tmp_path: Path, url: str) -> None:
    from tuner.run import specs as spec_mod
    from tuner.store.storage import study_name

    spec = write(tmp_path, FAULT, "fault.toml")
    name = study_name(spec_mod.load(str(spec)), 16)
    with workers() as started:
        w = Worker(["run", str(spec), "--storage", url, "-b", "16", "-n", "3"])
        started.append(w)
        # the study is made (under the lock); then the worker loads its data and claims
        assert w.wait_line(lambda s: s.startswith("storage: "), 120), w.stderr[-2000:]
        with hold_study_lock(url, name, w.pid) as someone_waits:
            if not trials_of(url):
                pytest.fail("the study was not made")
            # blocked in a claim: its first, or the next one if it got the lock first
            wait_for(someone_waits, 120, "the worker blocked on the study lock in its claim")
            w.send(signal.SIGINT)  # held while claiming (signals.deferred), raised after it
            time.sleep(0.5)
        assert w.wait(120) == 130, w.stderr[-2000:]
    no_traceback(w)
    trials = trials_of(url)[16]
    assert not [t for t in trials if t.state == TrialState.RUNNING], [t.state for t in trials]
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.system_attrs.get("fail_reason"), t.system_attrs


@pytest.mark.slow
def test_a_dead_workers_requeued_trial_has_a_reason_and_a_progress_line(tmp_path: Path,
                                                                        url: str) -> None:
    spec = write(tmp_path, MID, "fault.toml")
    args = ["run", str(spec), "--storage", url, "-b", "16", "-n", "2", "--heartbeat", "1"]
    with workers() as started:
        a = Worker(args)
        started.append(a)
        killed = stop_mid_trial(url, a)
        a.send(signal.SIGKILL)
        assert a.wait(60) == -9
        b = Worker(args)
        started.append(b)
        assert b.wait(300) == 0, b.stderr[-2000:]
    no_traceback(b)
    [trials] = trials_of(url).values()
    dead = trials[killed.number]
    assert dead.state == TrialState.FAIL and dead.system_attrs.get("fail_reason"), (
        dead.state, dead.system_attrs)
    assert [s for s in b.err if "re-queued" in s], b.stderr[-2000:]
    check_exact(trials, 2, slot_points(spec, 2))


# -- Defect 9: a half-created study ------------------------------------------------------------

def test_a_half_created_study_is_completed_by_run_and_curve_does_not_crash(tmp_path: Path
                                                                           ) -> None:
    from tuner.run import specs as spec_mod
    from tuner.store.storage import study_attrs, study_name

    spec = write(tmp_path, NQM, "nqm_half.toml")
    s = spec_mod.load(str(spec))
    url = f"sqlite:///{tmp_path / 'half.db'}"
    half = optuna.create_study(storage=url, study_name=study_name(s, 16), direction="minimize")
    half.set_user_attr("spec_name", s.name)  # killed right after the first attr
    c = run(["curve", str(spec), "--storage", url, "--n-boot", "0"], timeout=120)
    assert "Traceback" not in c.stderr and c.returncode in (0, 2), c.stderr[-2000:]
    r = run(["run", str(spec), "--storage", url, "-b", "16", "-n", "5", "-q"], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    study = studies(url)[study_name(s, 16)]
    assert set(study.user_attrs) >= set(study_attrs(s, 16)), set(study_attrs(s, 16)) - set(
        study.user_attrs)
    assert study.user_attrs["spec_fingerprint"] == s.fingerprint()
    check_exact(study.get_trials(), 5, slot_points(spec, 5))
    c = run(["curve", str(spec), "--storage", url, "--n-boot", "0"], timeout=120)
    assert c.returncode == 0 and "Traceback" not in c.stderr, c.stderr[-2000:]


# -- Defect 8, buffered path: an outage takes a worker's locks away ------------------------------

def _sql(url: str, query: str, **params: object) -> list[tuple]:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query), params).all()]
    finally:
        engine.dispose()


def _claim_token(url: str, pid: int) -> str | None:
    """The liveness token of the worker with ``pid``, from the claim it holds now (if any)."""
    import json

    from tuner.store.claims import PREFIX

    for key, value in _sql(url, "SELECT key, value_json FROM study_system_attributes "
                                "WHERE key LIKE :p", p=PREFIX + "%"):
        if str(json.loads(value).get("worker", "")).endswith(f":{pid}"):
            return key[len(PREFIX):]
    return None


def _liveness_backend(url: str, token: str) -> int | None:
    """The server backend holding the liveness lock of ``token`` (tuner.store.locking)."""
    from tuner.store.locking import lock_key

    key = lock_key(f"tuner worker {token}")
    rows = _sql(url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                     "AND objsubid = 1 AND classid::bigint = :h AND objid::bigint = :l",
                h=(key >> 32) & 0xFFFFFFFF, l=key & 0xFFFFFFFF)
    return rows[0][0] if rows else None


@pytest.mark.slow
def test_a_buffered_worker_whose_claim_was_taken_stores_no_duplicate(
        tmp_path: Path, postgres_url: str) -> None:
    # Buffered (NQM) workers claim blocks of slots and run them without the study lock; each
    # holds a liveness lock on a connection of its own. When that connection dies (a server
    # restart, a network outage: here the server ends that one backend) while worker a is
    # paused mid-block, worker b finds a's liveness lock free, drops a's claim and runs its
    # slots. Resumed, a must store none of them (the slot is no longer in its claim), take its
    # liveness lock again, and carry on.
    n = 600
    spec = write(tmp_path, NQM.replace("trials = 12", f"trials = {n}"), "nqm_lock.toml")
    args = ["run", str(spec), "--storage", postgres_url, "-b", "16"]
    with workers() as started:
        a = Worker(args)
        started.append(a)
        assert a.wait_line(lambda s: "trial 5/" in s, 120), a.stderr[-2000:]
        b = Worker(args)
        started.append(b)
        assert b.wait_line(lambda s: " trial " in s, 120), b.stderr[-2000:]
        for _ in range(50):  # pause a while it holds a claim, and no study lock
            a.send(signal.SIGSTOP)
            token = _claim_token(postgres_url, a.pid)
            held = _sql(postgres_url, "SELECT count(*) FROM pg_locks WHERE locktype = "
                                      "'advisory' AND granted")[0][0]
            if token is not None and held == 2:  # the two workers' liveness locks only
                break
            a.send(signal.SIGCONT)
            time.sleep(0.05)
        else:
            raise AssertionError("worker a never seen holding a claim")
        try:
            backend = _liveness_backend(postgres_url, token)
            assert backend is not None
            _sql(postgres_url, "SELECT pg_terminate_backend(:p)", p=backend)
            assert b.wait_line(lambda s: "is gone" in s, 120), b.stderr[-2000:]
        finally:
            a.send(signal.SIGCONT)
        assert a.wait(300) == 0 and b.wait(300) == 0, (a.stderr[-2000:], b.stderr[-2000:])
    no_traceback(a)
    no_traceback(b)
    [trials] = trials_of(postgres_url).values()
    check_exact(trials, n, slot_points(spec, n))
    assert any("no longer claimed" in line and "re-reading" in line for line in a.err), a.err[-5:]
    assert any("liveness lock" in line and "taken again" in line for line in a.err), a.err[-5:]
