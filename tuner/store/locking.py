"""One lock per batch-size study, shared by every worker on every machine.

The work queue (:mod:`tuner.run.trialqueue`) changes a study only while holding it: claiming the next
trial, re-queueing a failed one, failing stale ones. On PostgreSQL it is a session advisory lock
(the server releases it when a worker's connection dies, SIGKILL included); on a SQLite file it
is ``flock`` on ``<file>.lock`` next to it, one lock for the whole file as SQLite has one writer
anyway (the kernel releases it when the process dies); an in-memory SQLite storage has one
process and needs only a thread lock. Locks do not nest: hold one at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
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
    """The study lock was lost while held: its connection died (a server restart, a network
    outage) and the server released it, so another worker may hold it now."""


@dataclass(frozen=True)
class Holder:
    """Who holds a PostgreSQL study lock: its advisory-lock key and the holding backend."""

    key: int
    pid: int

    def check(self, conn: Any) -> None:
        """Raise :class:`LockLost` unless this holder still holds the lock, read on ``conn``
        (any connection: call it inside the transaction that relies on the lock).

        A bigint advisory key shows in ``pg_locks`` as classid (high 32 bits), objid (low 32
        bits) and objsubid 1.
        """
        high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        pids = conn.execute(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid::bigint = :h AND objid::bigint = :l"), {"h": high, "l": low}).scalars()
        if self.pid not in set(pids):
            raise LockLost(f"the study lock (backend {self.pid}) was released by the server")


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
