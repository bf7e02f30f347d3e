"""The work-queue locks (tuner.store.locking): a second holder waits until the first lets go, a
dead holder's lock is released, and a lost PostgreSQL lock is noticed (LockLost); a worker's
liveness lock is seen held while it lives, free once it is released or killed.

SQLite files are locked with flock (a blocked flock shows in /proc/locks), in-memory SQLite with
a thread lock, PostgreSQL with advisory locks (a waiting one shows in pg_locks as not granted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tuner.core.errors import UsageError
from tuner.store.locking import Holder, LockLost, lock_key, schema_lock, study_lock, worker_lock

Lock = Callable[[], contextlib.AbstractContextManager]
ROOT = Path(__file__).parents[2]


class Contender(threading.Thread):
    """A thread that takes ``lock``, says so, and holds it until told to let go."""

    def __init__(self, lock: Lock, order: list[str], name: str = "contender") -> None:
        super().__init__(daemon=True)
        self.lock, self.order, self.who = lock, order, name
        self.trying, self.acquired, self.leave = (threading.Event(), threading.Event(),
                                                  threading.Event())
        self.held: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.trying.set()
            with self.lock() as held:
                self.held = held
                self.order.append(f"{self.who} acquired")
                self.acquired.set()
                self.leave.wait(60)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.acquired.set()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` (a deadline, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def flock_waiters(pid: int) -> int:
    """How many flocks process ``pid`` is blocked on ("->" lines of /proc/locks)."""
    return sum("-> FLOCK" in line and f" {pid} " in line
               for line in Path("/proc/locks").read_text().splitlines())


def contend(first: Lock, second: Lock, waiting: Callable[[Contender], bool]) -> list[str]:
    """Hold ``first``; a thread takes ``second``: it must wait (``waiting(thread)`` says it
    does) until ``first`` is let go. Returns the order of events."""
    order: list[str] = []
    with first():
        c = Contender(second, order)
        c.start()
        c.trying.wait(10)
        wait_for(lambda: waiting(c) or c.acquired.is_set(), "the second holder to wait")
        assert not c.acquired.is_set(), (order, c.error)  # it got the lock while held
        order.append("first released")
    assert c.acquired.wait(60), order
    c.leave.set()
    c.join(60)
    assert c.error is None, c.error
    return order


# -- SQLite file: flock on <file>.lock -----------------------------------------------------------

@pytest.mark.parametrize("first, second", [
    ("study a", "study a"),
    ("study a", "study b"),  # one lock for the whole file: SQLite has one writer anyway
    ("schema", "schema"),
    ("schema", "study a"),
])
def test_a_sqlite_lock_waits_for_its_holder(tmp_path: Path, first: str, second: str) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"

    def make(which: str) -> Lock:
        if which == "schema":
            return lambda: schema_lock(url)
        return lambda: study_lock(url, which.split()[1])

    order = contend(make(first), make(second), lambda _: flock_waiters(os.getpid()) > 0)
    assert order == ["first released", "contender acquired"]
    assert (tmp_path / "l.db.lock").exists()
    with study_lock(url, "a") as held:  # free again, and no Holder off PostgreSQL
        assert held is None


HOLD = """
import sys, time
from tuner.store.locking import study_lock
with study_lock(sys.argv[1], "s"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_sqlite_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE, text=True,
                         env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        order: list[str] = []
        c = Contender(lambda: study_lock(url, "s"), order)
        c.start()
        wait_for(lambda: flock_waiters(os.getpid()) > 0 or c.acquired.is_set(),
                 "this process to wait for the killed one's lock")
        assert not c.acquired.is_set(), (order, c.error)
        p.send_signal(signal.SIGKILL)  # no finally, no unlock: the kernel releases it
        assert p.wait(60) == -signal.SIGKILL
        assert c.acquired.wait(60) and c.error is None, c.error
        c.leave.set()
        c.join(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# -- in-memory SQLite: one process, a thread lock ------------------------------------------------

def test_an_in_memory_study_lock_is_a_thread_lock() -> None:
    from tuner.store import locking

    url = "sqlite:///:memory:"
    # no flock to see in /proc/locks: the second has started and not got it in a while (a
    # missing lock fails here; a working one can only pass)
    order = contend(lambda: study_lock(url, "a"), lambda: study_lock(url, "b"),
                    lambda c: c.trying.is_set() and not c.acquired.wait(0.3))
    assert order == ["first released", "contender acquired"]
    assert not locking._local.locked()


def test_a_back_end_without_a_lock_is_refused() -> None:
    with pytest.raises(UsageError, match="back end 'mysql' is not supported"):
        with study_lock("mysql://u@localhost/db", "s"):
            pass


# -- PostgreSQL: session advisory locks ----------------------------------------------------------

def pg_waiting(url: str) -> Callable[..., bool]:
    """Whether some session of the test database waits for an advisory lock."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def waiting(_: object = None) -> bool:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND "
                "database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            ).scalar_one() > 0
    return waiting


def test_a_postgresql_lock_waits_for_its_holder(postgres_url: str) -> None:
    waiting = pg_waiting(postgres_url)
    order = contend(lambda: study_lock(postgres_url, "a"), lambda: study_lock(postgres_url, "a"),
                    waiting)
    assert order == ["first released", "contender acquired"]
    order = contend(lambda: schema_lock(postgres_url), lambda: schema_lock(postgres_url), waiting)
    assert order == ["first released", "contender acquired"]
    # two studies have two keys: their locks do not wait for each other
    with study_lock(postgres_url, "a"):
        c = Contender(lambda: study_lock(postgres_url, "b"), [])
        c.start()
        assert c.acquired.wait(60) and c.error is None, c.error
        c.leave.set()
        c.join(60)


def test_a_lost_postgresql_lock_is_noticed_and_taken_over(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    order: list[str] = []
    with engine.connect() as probe, study_lock(postgres_url, "s") as holder:
        assert isinstance(holder, Holder) and holder.key == lock_key("s")
        holder.check(probe)  # held: no error
        probe.commit()
        c = Contender(lambda: study_lock(postgres_url, "s"), order)
        c.start()
        wait_for(lambda: pg_waiting(postgres_url)() or c.acquired.is_set(), "b to wait")
        assert not c.acquired.is_set(), (order, c.error)
        # the holding connection dies (a server restart, an outage): the server releases it
        probe.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": holder.pid})
        probe.commit()
        assert c.acquired.wait(60) and c.error is None, c.error
        assert isinstance(c.held, Holder) and c.held.pid != holder.pid
        with pytest.raises(LockLost, match=f"backend {holder.pid}"):
            holder.check(probe)
        probe.commit()
        c.held.check(probe)  # the new holder holds it
        probe.commit()
    # leaving the lost lock's block was quiet (its connection was dead already)
    c.leave.set()
    c.join(60)
    assert order == ["contender acquired"]
    engine.dispose()


# -- liveness locks: is a buffered worker with a claim alive? -----------------------------------

LIVE = """\
import sys, time
from tuner.store.locking import worker_lock
with worker_lock(sys.argv[1]) as live:
    print(live.token, flush=True)
    time.sleep(600)
"""


def test_a_sqlite_liveness_lock_is_held_until_released_or_killed(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    url = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with worker_lock(url) as me:
        p = subprocess.Popen([sys.executable, "-c", LIVE, url], stdout=subprocess.PIPE,
                             text=True, env=env)
        try:
            other = p.stdout.readline().strip()
            assert other and me.alive(other)
            assert me.lock_file(other).exists()
            p.send_signal(signal.SIGKILL)  # no release: the kernel lets the flock go
            assert p.wait(60) == -signal.SIGKILL
            assert me.lock_file(other).exists()  # left behind ...
            assert not me.alive(other)  # ... free, so its worker is dead; and removed
            assert not me.lock_file(other).exists()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert not me.alive("never-held")
        # a new worker sweeps the files of dead ones
        Path(f"{db}.worker-deadbeef.lock").write_text("")
        with worker_lock(url) as second:
            assert me.alive(second.token) and second.alive(me.token)
        assert not me.alive(second.token)
        assert not Path(f"{db}.worker-deadbeef.lock").exists()
    assert not list(tmp_path.glob("l.db.worker-*"))


def test_an_in_memory_liveness_lock_is_this_process() -> None:
    with worker_lock("sqlite://") as a:
        with worker_lock("sqlite://") as b:
            assert a.alive(b.token) and b.alive(a.token)
        assert not a.alive(b.token)


def test_a_lost_postgresql_liveness_lock_is_noticed_and_taken_again(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with engine.connect() as probe, worker_lock(postgres_url) as me:
        with worker_lock(postgres_url) as other:
            assert me.alive(other.token, probe) and other.alive(me.token)
            me.check(probe)  # held: no error
            assert me.ensure() is False  # nothing lost
            [pid] = probe.execute(sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                "objsubid = 1 AND classid::bigint = :h AND objid::bigint = :l"),
                {"h": (lock_key(f"tuner worker {me.token}") >> 32) & 0xFFFFFFFF,
                 "l": lock_key(f"tuner worker {me.token}") & 0xFFFFFFFF}).scalars()
            probe.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            probe.commit()
            wait_for(lambda: not other.alive(me.token), "the server to release it")
            with pytest.raises(LockLost, match="liveness lock"):
                me.check(probe)
            probe.commit()
            assert me.ensure() is True  # taken again, on a new connection
            me.check(probe)
            assert other.alive(me.token)
        assert not me.alive(other.token)
    engine.dispose()
