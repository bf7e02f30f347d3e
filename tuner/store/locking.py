"""One lock per batch-size study, shared by every worker on every machine.

The work queue (:mod:`tuner.run.trialqueue`) changes a study only while holding it: claiming the next
trial, re-queueing a failed one, failing stale ones. On PostgreSQL it is a session advisory lock
(the server releases it when a worker's connection dies, SIGKILL included); on a SQLite file it
is ``flock`` on ``<file>.lock`` next to it, one lock for the whole file as SQLite has one writer
anyway (the kernel releases it when the process dies); an in-memory SQLite storage has one
process and needs only a thread lock. Locks do not nest: hold one at a time.

A buffered worker also holds a *liveness lock* of its own (:func:`worker_lock`) while it works:
other workers read whether it is held (:meth:`Liveness.alive`) to tell a live worker's claimed
slots (:mod:`tuner.store.claims`) from a dead one's, at once, without waiting for a timeout. It is
the same kind of lock, released by the kernel or the server when the worker dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tuner.store.retry import call
from tuner.store.urls import BACKENDS, backend, check_backend, sqlite_file  # noqa: F401

#: The storage back ends whose lock we implement (and test).

_local = threading.Lock()


def lock_key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock`` from a study name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@lru_cache(maxsize=8)
def _engine(url: str):  # noqa: ANN202 - sqlalchemy Engine

    return create_engine(url, poolclass=NullPool)


#: The advisory-lock key (PostgreSQL) that serialises creating Optuna's schema.
SCHEMA_KEY = lock_key("tuner: create the Optuna schema")


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold the lock under which a worker opens (and maybe creates) the storage's schema.

    Optuna creates its tables and types without guarding against a concurrent creator, so
    workers started at once on an empty storage would race. No retry: a server that refuses
    the first connection is bad input. Not inside a study lock (locks do not nest).
    """

    kind = backend(url)
    if kind == "postgresql":
        with _engine(url).connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_KEY})
            conn.commit()
            try:
                yield
            finally:
                _unlock(conn, SCHEMA_KEY)
    elif kind == "sqlite" and (db := sqlite_file(url)) is not None:
        with _flock(db):
            yield
    else:
        yield


@contextlib.contextmanager
def _flock(db: Path) -> Iterator[None]:
    with open(f"{db}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _unlock(conn: Any, key: int) -> None:
    """Release an advisory lock; on a dead connection the server has released it already."""
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except DBAPIError:
        pass


def _pg_lock(url: str, key: int) -> Any:
    """A connection holding the advisory lock ``key``, (re)connecting through outages."""
    def acquire() -> Any:
        conn = _engine(url).connect()
        try:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn

    return call(acquire, url, "postgresql")


class LockLost(Exception):
    """A study lock (or a worker's liveness lock) was lost while held: its connection died (a
    server restart, a network outage) and the server released it, so another worker may hold
    it now (or judge this one dead)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a PostgreSQL study lock (or liveness lock): its advisory-lock key and the
    holding backend."""

    key: int
    pid: int
    what: str = "the study lock"

    def check(self, conn: Any, any_pid: bool = False) -> None:
        """Raise :class:`LockLost` unless this holder still holds the lock, read on ``conn``
        (any connection: call it inside the transaction that relies on the lock); with
        ``any_pid``, unless anybody holds it.

        A bigint advisory key shows in ``pg_locks`` as classid (high 32 bits), objid (low 32
        bits) and objsubid 1.
        """
        high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        pids = conn.execute(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid::bigint = :h AND objid::bigint = :l"), {"h": high, "l": low}).scalars()
        held = set(pids)
        missing = not held if any_pid else self.pid not in held
        if missing:
            raise LockLost(f"{self.what} (backend {self.pid}) was released by the server")


@contextlib.contextmanager
def study_lock(url: str, name: str) -> Iterator[Holder | None]:
    """Hold the lock of study ``name`` in storage ``url`` (blocks until it is free); yields a
    :class:`Holder` on PostgreSQL (to check that the lock is still held), else None.

    On PostgreSQL, acquiring it rides out an outage as the storage does (:mod:`tuner.store.retry`);
    releasing it on a connection that died meanwhile is a no-op (the server released it).
    """

    kind = backend(url)
    if kind == "postgresql":
        key = lock_key(name)
        conn = _pg_lock(url, key)
        try:
            yield Holder(key, conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        finally:
            _unlock(conn, key)
            with contextlib.suppress(Exception):
                conn.close()
    elif kind == "sqlite" and (db := sqlite_file(url)) is not None:
        with _flock(db):
            yield None
    elif kind == "sqlite":
        with _local:
            yield None
    else:
        check_backend(url)
        raise AssertionError("unreachable")


#: Tokens of the liveness locks held in this process on in-memory SQLite storages.
_held_here: set[str] = set()


class Liveness:
    """A worker's liveness lock, identified by a random token (see the module docstring).

    On PostgreSQL a session advisory lock on a connection of its own; on a SQLite file ``flock``
    on ``<file>.worker-<token>.lock`` (removed on release, or by the first worker that finds it
    free); on an in-memory SQLite storage (one process) a name in a set.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.token = uuid.uuid4().hex[:16]
        self.kind = backend(url)
        self.db = sqlite_file(url) if self.kind == "sqlite" else None
        self._conn: Any = None
        self._fh: Any = None
        self._holder: Holder | None = None

    def lock_file(self, token: str) -> Path:
        """The lock file of the worker with ``token`` (a SQLite file's storage)."""
        assert self.db is not None
        return Path(f"{self.db}.worker-{token}.lock")

    def acquire(self) -> None:
        """Take the lock (a new file or connection: nobody else holds it)."""
        if self.kind == "postgresql":
            key = lock_key(f"tuner worker {self.token}")
            self._conn = _pg_lock(self.url, key)
            self._holder = Holder(key, self._conn.execute(
                text("SELECT pg_backend_pid()")).scalar_one(), "this worker's liveness lock")
        elif self.db is not None:
            # locked under a temporary name, then renamed: a file with the final name is
            # always locked while its worker lives (a sweeper never removes a live one)
            tmp = Path(f"{self.db}.worker-{self.token}.tmp")
            self._fh = open(tmp, "a")  # noqa: SIM115 - held until release()
            fcntl.flock(self._fh, fcntl.LOCK_EX)
            os.replace(tmp, self.lock_file(self.token))
            self._sweep()
        else:
            _held_here.add(self.token)

    def _sweep(self) -> None:
        """Remove the lock files of dead workers (killed ones leave theirs behind)."""
        assert self.db is not None
        prefix = f"{self.db.name}.worker-"
        for p in self.db.parent.glob(f"{self.db.name}.worker-*.lock"):
            token = p.name[len(prefix):-len(".lock")]
            if token != self.token:
                self.alive(token)

    def ensure(self, lost: bool = False) -> bool:
        """Take the lock again if an outage took it away (PostgreSQL: its connection died, or
        ``lost``: :meth:`check` said so); True if it did."""
        if self.kind != "postgresql":
            return False
        if not lost:
            try:
                self._conn.execute(text("SELECT 1")).scalar_one()
                self._conn.commit()
                return False
            except DBAPIError:
                pass
        with contextlib.suppress(Exception):
            self._conn.close()
        self.acquire()
        return True

    def check(self, conn: Any) -> None:
        """Raise :class:`LockLost` unless this worker still holds its lock, read on ``conn``
        (PostgreSQL; a file lock or a thread's cannot be lost while the process lives)."""
        if self._holder is not None:
            self._holder.check(conn)

    def alive(self, token: str, conn: Any = None) -> bool:
        """Whether the worker with ``token`` holds its liveness lock (``conn``: a connection to
        read it on, PostgreSQL; default: a new one)."""
        if self.kind == "postgresql":
            if conn is None:
                with _engine(self.url).connect() as c:
                    return self.alive(token, c)
            try:
                Holder(lock_key(f"tuner worker {token}"), -1).check(conn, any_pid=True)
            except LockLost:
                return False
            return True
        if self.db is None:
            return token in _held_here
        path = self.lock_file(token)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # releases the lock if it was taken here
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # free: its worker is dead
        return False

    def release(self) -> None:
        """Let the lock go (after the worker dropped its claims)."""
        if self.kind == "postgresql" and self._holder is not None:
            _unlock(self._conn, self._holder.key)
            with contextlib.suppress(Exception):
                self._conn.close()
            self._holder = None
        elif self._fh is not None:
            with contextlib.suppress(FileNotFoundError):
                self.lock_file(self.token).unlink()
            self._fh.close()
            self._fh = None
        else:
            _held_here.discard(self.token)


@contextlib.contextmanager
def worker_lock(url: str) -> Iterator[Liveness]:
    """Hold a new liveness lock for this worker on storage ``url`` (see :class:`Liveness`)."""
    live = Liveness(url)
    live.acquire()
    try:
        yield live
    finally:
        live.release()
