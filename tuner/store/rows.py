"""Stored studies and trials for analysis, read with a few set-based SQL queries.

``RDBStorage.get_all_trials`` builds a ``FrozenTrial`` per trial through Optuna's ORM: 17.5 s for
10,000 NQM trials here, most of an analysis command's time; opening an ``RDBStorage`` costs
~0.3 s more (its schema check loads alembic). Analysis needs only each study's name and user
attrs, and each trial's number, state, value, completion time, params, some user attrs and (for
studies stored before the ``curve`` attr) its intermediate values. A :class:`Reader` reads exactly
those, one SQLAlchemy Core ``SELECT`` per table over all the studies of a spec (trials and their
values in one), on Optuna's own tables (declared as Core tables in :mod:`tuner.store.compat`:
Optuna's ORM models would import ``sqlalchemy.orm``, 0.1 s), through a read-only connection
(nothing but ``SELECT``), and decodes them as Optuna does (params through their stored
distribution, values as Optuna's stored-representation converters do). On PostgreSQL the server
joins each trial's attrs into one row. The records equal the ORM path's
(``tests/store/test_rows.py`` compares both).

The reader trusts Optuna's table layout only for the schema version this Optuna writes
(:data:`tuner.store.compat.SCHEMA_HEAD`); :func:`open_reader` opens any other storage through
Optuna (``open_readonly``), which upgrades nothing and says what to do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import sqlalchemy as sa
from optuna.distributions import json_to_distribution
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tuner.store.compat import SCHEMA_HEAD, stored_float, tables
from tuner.core.errors import UsageError
from tuner.store.retry import call, db_error, describe
from tuner.store.storage import open_readonly, readonly_engine_args, refused

T = TypeVar("T")

#: Trial ids per ``IN (...)`` list (SQLite allows 32,766 host parameters; PostgreSQL more).
CHUNK = 5000


@dataclass
class StoredStudy:
    """The attributes of an Optuna ``FrozenStudy`` that analysis reads."""

    _study_id: int  # (named as Optuna names it, for tuner.store.compat.study_id)
    study_name: str
    user_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoredTrial:
    """The attributes of an Optuna ``FrozenTrial`` that analysis reads (tuner.store.source)."""

    number: int
    state: TrialState
    datetime_complete: dt.datetime | None
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate_values: dict[int, float] = field(default_factory=dict)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building tens of thousands of records triggers it
    over and over (for nothing: records hold no reference cycles); 10,000 NQM trials load in
    0.43 s instead of 0.68 s here."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def json_values(texts: Iterable[str]) -> list[Any]:
    """Each JSON text decoded, in one ``json.loads`` of them all (as one array: tens of
    thousands of small attrs decode several times faster so)."""
    return json.loads("[" + ",".join(texts) + "]")


def decoded_attrs(rows: Sequence[Any]) -> Iterator[tuple[int, str, Any]]:
    """(owner id, key, value) of user-attr rows (owner id, key, value_json)."""
    for (owner, key, _), value in zip(rows, json_values(r[2] for r in rows)):
        yield owner, key, value


def attr_members(attrs: Any) -> Any:
    """PostgreSQL's ``string_agg`` of a trial's user-attr rows into the members of one JSON
    object (``"key":value_json,...``, in the order they were set, as Optuna lists them). The
    stored JSON texts are joined as they are, not cast to ``json``: Optuna writes NaN and
    Infinity, which PostgreSQL's JSON types refuse and Python's ``json`` reads."""
    from sqlalchemy.dialects.postgresql import aggregate_order_by  # PostgreSQL only: 0.04 s

    member = sa.cast(sa.func.to_json(attrs.c.key), sa.Text) + ":" + attrs.c.value_json
    return sa.func.string_agg(member, aggregate_order_by(
        sa.literal_column("','"), attrs.c.trial_user_attribute_id))


class Reader:
    """Optuna's tables of one storage, read-only, for analysis (``read_only`` is True)."""

    read_only = True

    def __init__(self, url: str) -> None:
        self.url = url
        ro_url, kwargs = readonly_engine_args(url)
        self.engine = sa.create_engine(ro_url, **kwargs)
        self.backend = make_url(url).get_backend_name()
        self.t = tables()

    def retrying(self, fn: Callable[[], T]) -> T:
        """``fn()``, riding out an unreachable server like every storage call
        (:func:`tuner.store.retry.call`)."""
        return call(fn, self.url, self.backend)

    def schema(self) -> str | None:
        """The storage's schema version (alembic's ``version_num``); None without the table."""
        def read() -> str | None:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table("alembic_version"):
                    return None
                return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        return self.retrying(read)

    def get_all_studies(self) -> list[StoredStudy]:
        """Every study with its user attrs, in study-id order (as Optuna lists them)."""
        studies, attrs = self.t["studies"], self.t["study_user_attributes"]

        def read() -> list[StoredStudy]:
            with self.engine.connect() as conn:
                out = {sid: StoredStudy(sid, name) for sid, name in conn.execute(
                    sa.select(studies.c.study_id, studies.c.study_name)
                    .order_by(studies.c.study_id))}
                for sid, key, value in decoded_attrs(conn.execute(
                        sa.select(attrs.c.study_id, attrs.c.key, attrs.c.value_json)
                        .order_by(attrs.c.study_user_attribute_id)).all()):
                    out[sid].user_attrs[key] = value
            return list(out.values())
        return self.retrying(read)

    def read_trials(self, study_ids: Sequence[int], attr_keys: Sequence[str] | None = None,
                    intermediate: bool = True) -> dict[int, list[StoredTrial]]:
        """Every trial of the studies ``study_ids`` (study id -> trials in trial-id order, as
        ``get_all_trials`` orders them), with the user attrs ``attr_keys`` (all when None) and,
        with ``intermediate``, the intermediate values of the trials without a ``curve``
        attr (the only ones analysis reads them of)."""
        t = self.t
        trials = t["trials"]
        mine = trials.c.study_id.in_(list(study_ids))

        def joined(table: Any, *cols: Any) -> Any:
            return sa.select(*cols).select_from(
                table.join(trials, trials.c.trial_id == table.c.trial_id)).where(mine)

        def read() -> dict[int, list[StoredTrial]]:
            by_id: dict[int, StoredTrial] = {}
            out: dict[int, list[StoredTrial]] = {i: [] for i in study_ids}
            v = t["trial_values"]
            with self.engine.connect() as conn:
                # each trial with its (first objective's) value, if any, in one outer join
                for tid, number, sid, state, done, value, kind in conn.execute(
                        sa.select(trials.c.trial_id, trials.c.number, trials.c.study_id,
                                  trials.c.state, trials.c.datetime_complete, v.c.value,
                                  v.c.value_type)
                        .select_from(trials.outerjoin(v, sa.and_(
                            v.c.trial_id == trials.c.trial_id, v.c.objective == 0)))
                        .where(mine).order_by(trials.c.trial_id)).all():
                    by_id[tid] = StoredTrial(
                        number, state, done, None if kind is None else stored_float(value, kind))
                    out[sid].append(by_id[tid])
                p = t["trial_params"]
                dists: dict[str, Any] = {}
                for tid, name, internal, dist in conn.execute(joined(
                        p, p.c.trial_id, p.c.param_name, p.c.param_value,
                        p.c.distribution_json).order_by(p.c.param_id)).all():
                    d = dists.get(dist)
                    if d is None:
                        d = dists[dist] = json_to_distribution(dist)
                    by_id[tid].params[name] = d.to_external_repr(internal)
                a = t["trial_user_attributes"]
                keys = a.c.key.in_(list(attr_keys)) if attr_keys is not None else sa.true()
                if self.backend == "postgresql":
                    # one row per trial, its attrs as one JSON object's members built by the
                    # server: a tenth of the rows to send and decode (10,000 NQM trials:
                    # read_trials 0.28 -> 0.24 s, benchmarks/README.md)
                    rows = conn.execute(joined(a, a.c.trial_id, attr_members(a))
                                        .where(keys).group_by(a.c.trial_id)).all()
                    for (tid, _), attrs in zip(rows, json_values(
                            "{" + members + "}" for _, members in rows)):
                        by_id[tid].user_attrs = attrs
                else:
                    for tid, key, value in decoded_attrs(conn.execute(
                            joined(a, a.c.trial_id, a.c.key, a.c.value_json).where(keys)
                            .order_by(a.c.trial_user_attribute_id)).all()):
                        by_id[tid].user_attrs[key] = value
                # intermediate values stand in for the curve only where there is none (old
                # studies)
                old = [tid for tid, tr in by_id.items()
                       if "curve" not in tr.user_attrs] if intermediate else []
                iv = t["trial_intermediate_values"]
                for i in range(0, len(old), CHUNK):
                    for tid, s, value, kind in conn.execute(
                            sa.select(iv.c.trial_id, iv.c.step, iv.c.intermediate_value,
                                      iv.c.intermediate_value_type)
                            .where(iv.c.trial_id.in_(old[i:i + CHUNK]))
                            .order_by(iv.c.trial_intermediate_value_id)):
                        by_id[tid].intermediate_values[s] = stored_float(value, kind)
            return out
        return self.retrying(read)


def open_reader(url: str) -> Reader | BaseStorage:
    """A :class:`Reader` for ``url``; for a storage of another schema version than this
    Optuna's (or none), Optuna's own read-only storage (``open_readonly``), which refuses an
    incompatible one with Optuna's message.

    Raises:
        UsageError: no SQLite file there, or the storage cannot be opened.
    """
    reader = Reader(url)
    try:
        schema = reader.schema()
    except DBAPIError as exc:
        err = db_error(exc)
        if err is None:
            raise
        raise refused(url, err) from None
    if schema != SCHEMA_HEAD:
        reader.engine.dispose()
        try:
            return open_readonly(url)
        except RuntimeError as exc:  # Optuna: "no longer compatible ...; please execute ..."
            raise UsageError(f"--storage {describe(url)}: {exc}") from None
    return reader
