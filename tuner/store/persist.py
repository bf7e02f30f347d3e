"""Storing finished trials in one transaction with a handful of statements.

Fast workloads (the NQM) run their trials in an in-memory study and store them whole, the
finished trials of a claimed block of slots together (``tuner.run.runner``). Optuna's ``RDBStorage.create_new_trial(template_trial=...)`` stores
it row by row: a look-up and an insert for every attribute and every intermediate value, about
100 statements for an NQM trial (16 attrs, ~30 curve points), ~30 ms a trial on SQLite here.
:func:`store_trial` writes the same rows with SQLAlchemy Core, one insert per table (~2 ms a
trial here; :func:`store_trials` one insert per table for several trials), any study attributes
given in the same transaction (the runner gives none: the slot-aware samplers keep no state in
the study), and commits once: a killed run keeps every trial stored before it, each one whole.

A SQLite file is opened in write-ahead-log mode with ``synchronous = NORMAL``
(:func:`fast_sqlite`): a commit is written to the log but not flushed to the disk, so it costs
~0.01 ms instead of one to several fsyncs (0.7-12 ms here, depending on the other I/O of the
machine). A killed process loses nothing committed: the log is in the operating system's hands.
An operating-system crash or power loss may lose the last commits before a checkpoint, never
the database's consistency; a resumed run re-runs the lost trials. (Write-ahead logging needs a
local file system, not NFS: use PostgreSQL across machines, as for several workers.)

It writes Optuna's own tables through Optuna's own models (:func:`tuner.store.compat.models`, not a
public API; the trial row's values come from Optuna's model, which converts the datetimes):
``tests/store/test_persist.py`` checks that a trial stored here reads back exactly as one stored by
Optuna, so a schema change in a new Optuna fails there.
"""

from __future__ import annotations

import json
from typing import Any

from optuna.distributions import distribution_to_json
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy import Engine, event

from tuner.store import compat


def store_trial(storage: BaseStorage, study_id: int, trial: FrozenTrial,
                study_system_attrs: dict[str, Any], holder: Any = None) -> int:
    """Store the finished ``trial`` in study ``study_id`` and set ``study_system_attrs`` there,
    in one transaction. Returns the new trial's id. ``trial.number`` is assigned by the storage
    (the count of earlier trials in the study), as Optuna does.

    With ``holder`` (a :class:`tuner.store.locking.Holder`, or a :class:`tuner.store.claims.Claimed`
    set of slots), the transaction checks that the study lock is still held (or the slots still
    claimed) once it has locked the study's row (PostgreSQL) or the database (SQLite), and raises
    :class:`tuner.store.locking.LockLost` (:class:`tuner.store.claims.ClaimLost`), storing
    nothing, if a storage outage took it away (another worker may be running the same slots)."""
    return store_trials(storage, study_id, [trial], study_system_attrs, holder)[0]


def store_trials(storage: BaseStorage, study_id: int, trials: list[FrozenTrial],
                 study_system_attrs: dict[str, Any], holder: Any = None) -> list[int]:
    """:func:`store_trial` for several finished trials, in order, in one transaction (one
    insert per table for all of them). Returns their ids."""
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    if not isinstance(storage, RDBStorage):  # another kind of storage: Optuna's own way
        tids = [storage.create_new_trial(study_id, template_trial=t) for t in trials]
        for key, value in study_system_attrs.items():
            storage.set_study_system_attr(study_id, key, value)
        return tids
    retrying = getattr(storage, "retrying", None)  # tuner.store.retry.RetryingStorage: ride out outages
    if retrying is not None:
        return retrying(lambda: _store(storage, study_id, trials, study_system_attrs, holder))
    return _store(storage, study_id, trials, study_system_attrs, holder)


def _store(storage: RDBStorage, study_id: int, trials: list[FrozenTrial],
           study_system_attrs: dict[str, Any], holder: Any = None) -> list[int]:
    from sqlalchemy import func, inspect, select

    models = compat.models()
    table = models.TrialModel.__table__
    tids: list[int] = []
    rows: dict[Any, list[dict[str, Any]]] = {m: [] for m in (
        models.TrialValueModel, models.TrialParamModel, models.TrialUserAttributeModel,
        models.TrialSystemAttributeModel, models.TrialIntermediateValueModel)}
    with storage.engine.begin() as conn:
        # The trial number counts the trials before this one: lock the study row as Optuna does
        # (SQLite has no row locks; there the insert below takes the database's write lock).
        if storage.engine.name != "sqlite":
            studies = models.StudyModel.__table__
            conn.execute(select(studies.c.study_id).where(studies.c.study_id == study_id)
                         .with_for_update())
        for trial in trials:
            # The trial row's columns as Optuna's model writes them (it converts the datetimes).
            model = models.TrialModel(study_id=study_id, number=None, state=trial.state,
                                      datetime_start=trial.datetime_start,
                                      datetime_complete=trial.datetime_complete)
            row = {prop.columns[0].name: getattr(model, prop.key)
                   for prop in inspect(models.TrialModel).column_attrs if prop.key != "trial_id"}
            tid = conn.execute(table.insert().values(**row)).inserted_primary_key[0]
            if holder is not None and not tids:  # still ours? checked once it is all locked
                holder.check(conn)
            tids.append(tid)
            number = conn.execute(select(func.count()).select_from(table).where(
                (table.c.study_id == study_id) & (table.c.trial_id < tid))).scalar_one()
            conn.execute(table.update().where(table.c.trial_id == tid).values(number=number))
            _child_rows(models, tid, trial, rows)
        for table_model, children in rows.items():
            if children:
                conn.execute(table_model.__table__.insert(), children)

        attrs = models.StudySystemAttributeModel.__table__
        for key, value in study_system_attrs.items():
            where = (attrs.c.study_id == study_id) & (attrs.c.key == key)
            if not conn.execute(attrs.update().where(where).values(
                    value_json=json.dumps(value))).rowcount:
                conn.execute(attrs.insert().values(study_id=study_id, key=key,
                                                   value_json=json.dumps(value)))
    return tids


def _child_rows(models: Any, tid: int, trial: FrozenTrial, rows: dict[Any, list]) -> None:
    """Add the rows of ``trial`` (id ``tid``) in Optuna's other trial tables to ``rows``."""
    for objective, value in enumerate(trial.values or []):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        rows[models.TrialValueModel].append({"trial_id": tid, "objective": objective,
                                             "value": stored, "value_type": kind})
    rows[models.TrialParamModel].extend(
        {"trial_id": tid, "param_name": name,
         "param_value": trial.distributions[name].to_internal_repr(value),
         "distribution_json": distribution_to_json(trial.distributions[name])}
        for name, value in trial.params.items())
    rows[models.TrialUserAttributeModel].extend(
        {"trial_id": tid, "key": k, "value_json": json.dumps(v)}
        for k, v in trial.user_attrs.items())
    rows[models.TrialSystemAttributeModel].extend(
        {"trial_id": tid, "key": k, "value_json": json.dumps(v)}
        for k, v in trial.system_attrs.items())
    for step, value in trial.intermediate_values.items():
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
        rows[models.TrialIntermediateValueModel].append(
            {"trial_id": tid, "step": step, "intermediate_value": stored,
             "intermediate_value_type": kind})


def fast_sqlite(engine: Engine) -> None:
    """Every new connection of ``engine`` (a SQLite file) uses the write-ahead log and flushes
    it to the disk at checkpoints only (see the module docstring)."""

    def on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode = WAL")
        dbapi_connection.execute("PRAGMA synchronous = NORMAL")

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before the listener get closed
