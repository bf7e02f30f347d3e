"""Storage: the URL, study naming, and the study attrs of docs/DESIGN.md's storage contract.

One Optuna study per (spec, batch size, seed). The name contains all three for people; code reads
the attrs (``spec_name``, ``batch_size``, ...), never the name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import warnings
from importlib import metadata
from typing import Any
from urllib.parse import quote

import optuna
from optuna.storages import RDBStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tuner.core.errors import UsageError
from tuner.spec import Spec
from tuner.store.compat import study_id
from tuner.store.locking import schema_lock
from tuner.store.persist import fast_sqlite
from tuner.store.retry import RetryingStorage, cause, db_error, describe
from tuner.store.urls import (  # noqa: F401 - re-exported
    DEFAULT_URL,
    ENV_VAR,
    in_memory,
    resolve_url,
    sqlite_file,
    writable,
)

#: A PostgreSQL session of a worker that sits inside a transaction this long (ms) is ended by
#: the server, releasing its row locks. Our transactions last milliseconds; only a frozen worker
#: (SIGSTOP, a paused VM) holds one open, and its locks would block every other worker for good.
IDLE_IN_TRANSACTION_MS = 30_000


def _engine_kwargs(url: str) -> dict[str, Any]:
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"connect_args": {
        "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"}}


def refused(url: str, err: Any) -> UsageError:
    """The one-line error for a storage that cannot be opened (``err``: the DBAPI error)."""
    return UsageError(f"--storage: cannot open {describe(url)}: {cause(err)}; allowed: a "
                      "reachable server and a database that exists (see scripts/postgres.sh)")


def open_storage(url: str, heartbeat: int | None = None, *,
                 retry_seconds: float | None = None) -> RDBStorage:
    """An Optuna RDB storage; SQLite gets a long lock timeout so concurrent writers wait, and
    a SQLite file commits without waiting for the disk (:func:`tuner.store.persist.fast_sqlite`).

    With ``heartbeat`` (seconds), a running trial records a heartbeat that often; one silent
    for twice *its own worker's* interval (its worker died) is failed and re-queued with the
    same params by the next worker that claims a trial (:mod:`tuner.run.trialqueue`).

    The storage retries an unreachable database for ``retry_seconds`` (default
    :func:`tuner.store.retry.seconds`) before raising :class:`tuner.store.retry.StorageUnavailable`
    (:class:`tuner.store.retry.RetryingStorage`). Workers opening an empty storage at once create the
    schema one at a time (:func:`tuner.store.locking.schema_lock`).

    Raises:
        UsageError: the storage cannot be written or reached when it is opened.
    """
    db = sqlite_file(url)
    if db is not None and not writable(url):
        where = db if db.exists() else db.parent
        raise UsageError(f"--storage: {where} is not writable (read-only file, folder or file "
                         "system, or a mode=ro URL); allowed: a writable location (analysis "
                         "commands read a read-only file)")
    kwargs = _engine_kwargs(url)
    beat: dict[str, Any] = {}
    if heartbeat is not None:
        beat = {"heartbeat_interval": heartbeat}  # staleness: tuner.run.trialqueue.stale_trials
    try:
        with schema_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RetryingStorage(url, engine_kwargs=kwargs, **beat)
    except (DBAPIError, optuna.exceptions.StorageInternalError) as exc:
        err = db_error(exc)
        if err is None:
            raise
        raise refused(url, err) from None
    storage.retry_seconds = retry_seconds
    if db is not None:
        fast_sqlite(storage.engine)
    return storage


def readonly_engine_args(url: str) -> tuple[str, dict[str, Any]]:
    """The URL and SQLAlchemy engine kwargs that open ``url`` for reading only: a SQLite file
    with ``mode=ro`` (plus ``immutable=1`` when the file or its folder is not writable), a
    PostgreSQL session with ``default_transaction_read_only``.

    Raises:
        UsageError: no SQLite file there.
    """
    db = sqlite_file(url)
    kwargs: dict[str, Any] = {}
    if db is not None:
        if not db.is_file():
            raise UsageError(f"--storage: no SQLite file at {db}; run `tuner run` first "
                             "or pass the storage the studies are in")
        path = quote(str(db.resolve()), safe="/")
        frozen = not (os.access(db, os.W_OK) and os.access(db.resolve().parent, os.W_OK))
        url = f"sqlite:///file:{path}?mode=ro{'&immutable=1' if frozen else ''}&uri=true"
        kwargs = _engine_kwargs(url)
    elif not url.startswith("sqlite"):
        kwargs = {"connect_args": {"options": "-c default_transaction_read_only=on"}}
    return url, kwargs


def open_readonly(url: str) -> RDBStorage:
    """An Optuna RDB storage for analysis that never writes: no schema creation, no
    write-ahead-log switch; a SQLite file is opened read-only (``mode=ro``, plus
    ``immutable=1`` when the file or its folder is not writable, as on read-only media),
    a PostgreSQL session is read-only. ``storage.read_only`` is True.

    Raises:
        UsageError: no SQLite file there, or the storage cannot be opened.
    """
    url, kwargs = readonly_engine_args(url)
    try:
        storage = RetryingStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
    except (DBAPIError, optuna.exceptions.StorageInternalError) as exc:
        err = db_error(exc)
        if err is None:
            raise
        raise refused(url, err) from None
    storage.read_only = True
    return storage


def study_name(spec: Spec, batch_size: int) -> str:
    """Human-readable study name; never parse it, read the attrs."""
    return f"{spec.name}.B{batch_size}.seed{spec.seed}"


def versions() -> dict[str, str]:
    """Versions of the project and the libraries that shape results."""
    out = {"python": platform.python_version()}
    for key, dist in (("project", "batch-scaling-tuner"), ("torch", "torch"),
                      ("lightning", "lightning"), ("optuna", "optuna")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def study_attrs(spec: Spec, batch_size: int) -> dict[str, Any]:
    """The study ``user_attrs`` of docs/DESIGN.md's storage contract (plus a few extras)."""
    c = spec.cadence
    max_steps = spec.max_steps(batch_size)
    n_evals = len(spec.eval_steps(batch_size))
    first, interval = spec.eval_spacing(batch_size)  # max_share may widen the cadence's
    return {
        "spec_name": spec.name,
        "batch_size": batch_size,
        "seed": spec.seed,
        "workload": spec.workload_name,
        "workload_options": spec.workload.options_dict(),
        "optimizer": spec.optimizer,
        "schedule": spec.schedule,
        "fixed_params": spec.fixed,
        "target": dataclasses.asdict(spec.target),
        "budget": {"max_steps": max_steps, "derived_from": spec.budget.rule(),
                   "divergence_factor": spec.budget.divergence_factor,
                   **({"train_to_budget": True} if spec.budget.train_to_budget else {})},
        "search_space": {p.name: p.to_attr() for p in spec.space},
        "sampler": dataclasses.asdict(spec.sampler),
        "pruner": dataclasses.asdict(spec.pruner),
        "eval_cadence": {**dataclasses.asdict(c), "n_evals": n_evals,
                         "first_step_here": first, "min_interval_here": interval,
                         "resolution": (f"steps-to-target is the first evaluation step at or "
                                        f"past the crossing: at most max({interval}, "
                                        f"{c.relative:.0%}) steps late")},
        "precision": spec.precision,
        "versions": versions(),
        **({"series": spec.series.to_attr()} if spec.series is not None else {}),
        "data": {"n_train": spec.bound().num_train_examples(),
                 "n_val": spec.bound().num_val_examples()},
        "spec_file": spec.path,
        "spec_text": spec.text,
        "spec_fingerprint": spec.fingerprint(),
        "spec_identity": json.loads(json.dumps(spec.identity(), default=str)),
    }


def write_study_attrs(study: optuna.Study, attrs: dict[str, Any],
                      fingerprint: bool = True) -> None:
    """Set the study attrs that differ from ``attrs``, ``spec_name`` first (what
    :func:`check_ours` recognises) and ``spec_fingerprint`` last (what says the study is
    complete); without ``fingerprint``, every attr but it (the caller writes it once the
    study's trials are in)."""
    have = study.user_attrs
    keys = [k for k in attrs if k not in ("spec_name", "spec_fingerprint")]
    for k in ("spec_name", *keys, *(["spec_fingerprint"] if fingerprint else [])):
        if have.get(k) != attrs[k]:
            study.set_user_attr(k, attrs[k])


def changed_key(spec: Spec, stored_attrs: dict[str, Any]) -> str:
    """The first part of ``spec`` that differs from the study stored with ``stored_attrs``
    (its ``spec_identity`` attr); ``spec`` when no single part differs."""
    return first_difference(spec, stored_attrs) or "spec"


def first_difference(spec: Spec, stored_attrs: dict[str, Any]) -> str | None:
    """The first part of ``spec``'s identity that differs from the stored study's, or None.

    A spec read without its workload (analysis: :func:`tuner.spec.load`) knows only the
    workload options its file gives and the target direction when the file gives one: those
    are compared as given (a default changed inside the workload's code is not seen).
    """
    stored = stored_attrs.get("spec_identity", {})
    now = json.loads(json.dumps(spec.identity(), default=str))
    for k, v in now.items():
        old = stored.get(k)
        if spec.workload is None and k == "workload_options" and isinstance(old, dict):
            if any(k2 not in old or old[k2] != v2 for k2, v2 in v.items()):
                return k
        elif spec.workload is None and k == "target" and isinstance(old, dict) and not v["direction"]:
            if {**v, "direction": old.get("direction")} != old:
                return k
        elif old != v:
            return k
    return None


def check_studies(storage: RDBStorage, spec: Spec, batch_sizes: tuple[int, ...]) -> None:
    """Refuse to resume studies made from a different spec (before anything is written).

    Raises:
        UsageError: naming the study and the first part of the spec that changed.
    """
    existing = {s.study_name: s for s in storage.get_all_studies()}
    mine = spec.fingerprint()
    for b in batch_sizes:
        s = existing.get(study_name(spec, b))
        if s is None:
            continue
        check_ours(storage, s, spec)
        # no fingerprint yet: half-created (create_or_load completes it under the study lock)
        if s.user_attrs.get("spec_fingerprint") in (None, mine):
            continue
        raise UsageError(
            f"{spec.path}: {changed_key(spec, s.user_attrs)}: differs from the stored study {s.study_name!r}, which "
            f"was made from another version of this spec; restore it, rename the spec "
            f"(name = ...), or use another --storage"
        )


def check_ours(storage: RDBStorage, s: optuna.study.FrozenStudy, spec: Spec) -> None:
    """Refuse a study that another program made under one of this spec's study names.

    Ours: its ``spec_name`` attr is the spec's name (a study killed while its attrs were being
    written has at least that one: it is written first), or it is still empty (no attrs, no
    trials: nothing of it would be counted). Anything else (trials but none of our attrs,
    another spec's name) was not made by ``tuner run`` for this spec.

    Raises:
        UsageError: naming the study and what is foreign about it.
    """
    name = s.user_attrs.get("spec_name")
    if name == spec.name:
        return
    n_trials = len(storage.get_all_trials(study_id(s), deepcopy=False))
    if name is None and not s.user_attrs and not n_trials:
        return
    what = (f"its spec_name attr is {name!r}" if name is not None
            else f"it has {n_trials} trial(s) and none of tuner's study attrs")
    raise UsageError(f"--storage: study {s.study_name!r} was not made by `tuner run` for spec "
                     f"{spec.name!r} ({what}); refusing to count or add to it: use another "
                     "--storage, or rename the spec (name = ...)")


def create_or_load(storage: RDBStorage, spec: Spec, batch_size: int,
                   sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner
                   ) -> optuna.Study:
    """The batch-size study, created with its attrs if new. Hold the study lock.

    Raises:
        UsageError: the study was made from another version of the spec.
    """
    name = study_name(spec, batch_size)
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get("spec_fingerprint")
    if stored is None:  # new, or half-created by a killed worker: write every attr
        check_ours(storage, next(x for x in storage.get_all_studies() if x.study_name == name),
                   spec)
        write_study_attrs(study, study_attrs(spec, batch_size))
    elif stored != spec.fingerprint():  # made meanwhile by a worker with another spec
        check_studies(storage, spec, (batch_size,))
    return study
