"""The Optuna internals tuner needs, in one place, checked against the tested version.

Optuna's public API has no way to read a trial's last heartbeat, to run a heartbeat thread for a
trial outside ``Study.optimize``, to finish a PRUNED trial without a value, to write its tables
in one transaction, or to reach a study's storage and ids (what ``Study.ask``/``tell`` do
internally, which the work queue does under its lock). These wrappers use its private modules
(``optuna.storages._heartbeat``, ``optuna.storages._rdb.models``) and attributes
(``Study._storage``, ``Study._study_id``, ``Trial._trial_id``, ...); a new Optuna major version
fails loudly here, at import, instead of somewhere in a worker. No other module touches a private
Optuna name (``tests/store/test_compat.py`` checks the source tree); the rest is Optuna's public API.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread as _heartbeat_thread
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

#: Optuna major versions these wrappers were written and tested against.
TESTED_MAJOR = (5,)
if int(optuna.__version__.split(".")[0]) not in TESTED_MAJOR:
    raise ImportError(f"tuner needs optuna {' or '.join(map(str, TESTED_MAJOR))}.x (its private "
                      f"internals are used by tuner.store.compat); found {optuna.__version__}")

#: The schema version (alembic's ``version_num``) of the Optuna RDB tables that
#: :mod:`tuner.store.rows` reads directly; ``tests/store/test_compat.py`` checks it against the
#: installed Optuna's migration head.
SCHEMA_HEAD = "v3.2.0.a"

__all__ = ["RETRIED_PRIVATE_METHODS", "SCHEMA_HEAD", "forget_cached_trials", "heartbeat_thread",
           "heartbeats", "is_heartbeat_enabled", "models", "rdb", "record_heartbeat",
           "storage_of", "stored_float", "study_id", "TABLES", "tables", "tell_pruned",
           "trial_id"]

#: Private ``RDBStorage`` methods that talk to the database, retried by
#: :class:`tuner.store.retry.RetryingStorage` like the public ones (``Study.optimize``'s
#: ``fail_stale_trials`` calls them).
RETRIED_PRIVATE_METHODS = ("_get_stale_trial_ids",)


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage (as the study uses it: wrapped in Optuna's cache for an RDB storage)."""
    return study._storage


def study_id(study: Any) -> int:
    """The storage's id of a ``Study`` or ``FrozenStudy``."""
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a ``Trial`` or ``FrozenTrial`` (its ``number`` counts within the
    study; the storage's trial methods take this id)."""
    return trial._trial_id


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the study's cached trial list, as ``Study.tell`` does when a trial finishes (the
    samplers read the trials from that cache while a trial runs)."""
    study._thread_local.cached_all_trials = None


def models() -> Any:
    """Optuna's SQLAlchemy models of its RDB tables (``optuna.storages._rdb.models``)."""
    from optuna.storages._rdb import models as rdb_models

    return rdb_models


#: Optuna's tables at :data:`SCHEMA_HEAD`: the columns :mod:`tuner.store.rows` reads (the
#: key, then the rest), as ``tests/store/test_compat.py`` checks against Optuna's models.
TABLES = {
    "studies": ("study_id", "study_name"),
    "study_user_attributes": ("study_user_attribute_id", "study_id", "key", "value_json"),
    "trials": ("trial_id", "number", "study_id", "state", "datetime_complete"),
    "trial_params": ("param_id", "trial_id", "param_name", "param_value", "distribution_json"),
    "trial_values": ("trial_value_id", "trial_id", "objective", "value", "value_type"),
    "trial_user_attributes": ("trial_user_attribute_id", "trial_id", "key", "value_json"),
    "trial_intermediate_values": ("trial_intermediate_value_id", "trial_id", "step",
                                  "intermediate_value", "intermediate_value_type"),
}


def tables() -> dict[str, Any]:
    """Optuna's RDB tables at :data:`SCHEMA_HEAD` as SQLAlchemy Core tables with the columns of
    :data:`TABLES`, declared here rather than taken from ``optuna.storages._rdb.models``:
    importing those ORM models imports ``sqlalchemy.orm``, 0.1 s of every analysis command.
    Enum columns come back as the names Optuna stores (``state`` as a ``TrialState``)."""
    types = {"study_name": sa.String, "key": sa.String, "value_json": sa.Text,
             "state": lambda: sa.Enum(TrialState), "datetime_complete": sa.DateTime,
             "param_name": sa.String, "param_value": sa.Float, "distribution_json": sa.Text,
             "value": sa.Float, "value_type": sa.String, "intermediate_value": sa.Float,
             "intermediate_value_type": sa.String}
    meta = sa.MetaData()
    return {name: sa.Table(name, meta, *(sa.Column(c, types.get(c, sa.Integer)()) for c in cols))
            for name, cols in TABLES.items()}


def stored_float(value: float | None, kind: str) -> float | None:
    """A stored objective or intermediate value from its column and its stored type's name
    (``FINITE``, ``INF_POS``, ``INF_NEG``, ``NAN``), as Optuna's models'
    ``stored_repr_to_value`` and ``stored_repr_to_intermediate_value`` decode them."""
    return {"INF_POS": float("inf"), "INF_NEG": float("-inf"), "NAN": float("nan")}.get(
        kind, value)


def heartbeat_thread(trial_id: int, storage: BaseStorage) -> Any:
    """A context manager that records the trial's heartbeat every ``heartbeat_interval`` s
    (a no-op for storages without heartbeats)."""
    return _heartbeat_thread(trial_id, storage)


def record_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    """Record one heartbeat of ``trial_id`` now (nothing for storages without heartbeats)."""
    if is_heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]


def rdb(storage: BaseStorage) -> BaseStorage:
    """The RDB storage behind a study's storage (``Study`` wraps it in Optuna's cache)."""
    return getattr(storage, "_backend", storage)


def heartbeats(storage: BaseStorage, study_id: int) -> tuple[dt.datetime, dict[int, dt.datetime]]:
    """The database's clock now and the last heartbeat of every RUNNING trial of the study that
    has one (trial id -> time, both naive, in the database's clock, as Optuna writes them)."""
    import sqlalchemy as sa

    m = models()
    storage = rdb(storage)
    if not isinstance(storage, RDBStorage):
        return dt.datetime.now(), {}
    beats = m.TrialHeartbeatModel.__table__
    trials = m.TrialModel.__table__
    query = (sa.select(beats.c.trial_id, beats.c.heartbeat)
             .join(trials, trials.c.trial_id == beats.c.trial_id)
             .where((trials.c.study_id == study_id) & (trials.c.state == TrialState.RUNNING)))

    def read() -> tuple[Any, list[Any]]:
        with storage.engine.connect() as conn:
            return (conn.execute(sa.select(sa.func.now())).scalar_one(),
                    list(conn.execute(query).all()))

    # tuner.store.retry.RetryingStorage rides out an outage; a plain RDBStorage reads once
    now, rows = getattr(storage, "retrying", lambda f: f())(read)
    now = now.replace(tzinfo=None) if isinstance(now, dt.datetime) else dt.datetime.fromisoformat(
        str(now))
    return now, {tid: (hb.replace(tzinfo=None) if isinstance(hb, dt.datetime)
                       else dt.datetime.fromisoformat(str(hb))) for tid, hb in rows}


def tell_pruned(study: optuna.Study, trial: optuna.Trial) -> None:
    """Finish a RUNNING trial as PRUNED *without* a value.

    ``Study.tell(state=PRUNED)`` stores the last intermediate value (here a validation error) as
    the trial's value, which optuna-dashboard then draws on the steps-to-target axis beside the
    COMPLETE trials. The steps a pruned trial ran are in its ``stopped_at_step`` attr.
    This does what ``Study.tell`` does for PRUNED, less the value.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial was finished meanwhile (by another
            worker that found it stale).
    """
    frozen = storage_of(study).get_trial(trial_id(trial))
    forget_cached_trials(study)
    try:
        study.sampler.after_trial(study, frozen, TrialState.PRUNED, None)
    finally:
        storage_of(study).set_trial_state_values(trial_id(trial), TrialState.PRUNED, None)
