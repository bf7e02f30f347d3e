"""Riding out storage outages: retry with backoff for a bounded time, then one clear error.

A PostgreSQL server that restarts drops every connection; a worker that gave up at the first
error would lose its running trial and print pages of chained tracebacks. :class:`RetryingStorage`
is Optuna's ``RDBStorage`` whose storage methods retry connection errors with exponential backoff
(capped at :data:`MAX_DELAY` seconds) until ``retry_seconds`` have passed since the first failure,
then raise :class:`StorageUnavailable`, which ``tuner.cli.main`` prints as one line (exit 1).
Errors that waiting cannot fix (a full disk, a read-only SQLite file) raise it at once.

Heartbeats (Optuna's heartbeat thread calls ``record_heartbeat``) never raise: a missed beat is
retried by the next one.

How long to retry is a process-wide setting (:func:`configure`, ``tuner run --storage-retry``),
inherited by local worker processes through ``$TUNER_STORAGE_RETRY``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.storages import RDBStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from tuner.store import compat

#: Seconds to keep retrying a storage that cannot be reached (``--storage-retry``).
DEFAULT_SECONDS = 60.0
#: Longest wait between two attempts, seconds.
MAX_DELAY = 5.0
ENV_VAR = "TUNER_STORAGE_RETRY"

T = TypeVar("T")
_noticed: set[str] = set()  # storages this process said it is retrying


class StorageUnavailable(Exception):
    """The storage cannot be used (down for longer than the retry time, disk full, ...).

    The CLI prints ``str(error)`` as one line and exits with status 1.
    """


def configure(seconds: float) -> None:
    """Retry an unreachable storage for ``seconds`` in this process and its child processes."""
    os.environ[ENV_VAR] = repr(float(seconds))


def seconds() -> float:
    """How long to retry an unreachable storage (:func:`configure`, else the default)."""
    try:
        return max(0.0, float(os.environ.get(ENV_VAR, DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def db_error(exc: BaseException) -> Any:
    """The SQLAlchemy ``DBAPIError`` behind ``exc`` (itself, its cause or context), or None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, DBAPIError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def transient(err: Any, backend: str) -> bool:
    """Whether waiting may cure the database error ``err`` (a SQLAlchemy ``DBAPIError``)."""
    if getattr(err, "connection_invalidated", False):
        return True
    if backend == "sqlite":
        return isinstance(err, OperationalError) and "locked" in cause(err)
    return isinstance(err, (OperationalError, InterfaceError))


def cause(err: Any) -> str:
    """The first line of the driver's message behind a SQLAlchemy error."""
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip().splitlines()
    return text[0].strip() if text else type(orig).__name__


def describe(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message must not fail
        return url


def call(fn: Callable[[], T], url: str, backend: str, retry_for: float | None = None,
         on_retry: Callable[[], None] = lambda: None) -> T:
    """``fn()``, retried on transient database errors for ``retry_for`` seconds (default
    :func:`seconds`) with exponential backoff; ``on_retry`` runs before each new attempt.

    Raises:
        StorageUnavailable: a permanent database error, or still failing at the deadline.
    """
    retry_for = seconds() if retry_for is None else retry_for
    deadline: float | None = None
    delay = 0.1
    while True:
        try:
            return fn()
        except Exception as exc:
            err = db_error(exc)
            if err is None:
                raise
            if not transient(err, backend):
                if isinstance(err, (OperationalError, InterfaceError)):
                    raise StorageUnavailable(f"storage {describe(url)}: {cause(err)}") from exc
                raise  # an integrity or programming error: not ours to hide
            now = time.monotonic()
            if deadline is None:
                deadline = now + retry_for
            if url not in _noticed:  # said once a process, not once a retried call
                _noticed.add(url)
                print(f"storage {describe(url)} unreachable ({cause(err)}); retrying for up to "
                      f"{retry_for:g} s", file=sys.stderr, flush=True)
            if now >= deadline:
                raise StorageUnavailable(
                    f"storage {describe(url)}: unreachable for {retry_for:g} s (--storage-retry): "
                    f"{cause(err)}") from None
            time.sleep(min(delay, deadline - now))
            delay = min(2 * delay, MAX_DELAY)
            on_retry()


#: RDBStorage methods that talk to the database (the BaseStorage API Optuna calls).
METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials",
    "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", *compat.RETRIED_PRIVATE_METHODS,
)


class RetryingStorage(RDBStorage):
    """``RDBStorage`` that rides out outages (see the module docstring).

    ``read_only`` marks a storage opened for analysis only (:func:`tuner.store.storage.open_readonly`).
    """

    read_only: bool = False
    retry_seconds: float | None = None  # None: :func:`seconds` at each failure

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat; a failure is silent (the next beat tries again)."""
        try:
            super().record_heartbeat(trial_id)
        except Exception:  # noqa: BLE001 - a heartbeat thread must never print a traceback
            pass

    def retrying(self, fn: Callable[[], T]) -> T:
        """``fn()`` (which uses this storage's engine), retried as the storage methods are."""
        return call(fn, self.url, self.engine.name, self.retry_seconds)


def _retrying(name: str) -> Callable[..., Any]:
    base = getattr(RDBStorage, name)

    @functools.wraps(base)
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.retrying(lambda: base(self, *args, **kwargs))

    return method


for _name in METHODS:
    setattr(RetryingStorage, _name, _retrying(_name))
