"""Storage: the URL, study naming, and the study attrs of DESIGN.md's storage contract.

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
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from tuner.errors import UsageError
from tuner.spec import Spec

DEFAULT_URL = "sqlite:///results/tuner.db"
ENV_VAR = "TUNER_STORAGE"


def resolve_url(url: str | None) -> str:
    """``url``, else ``$TUNER_STORAGE``, else a SQLite file ``results/tuner.db`` (git-ignored).

    Raises:
        UsageError: the URL is not a SQLAlchemy URL.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(f"--storage: {url!r} is not a SQLAlchemy URL; allowed: e.g. "
                         "sqlite:///results/tuner.db or postgresql+psycopg://user@host/db") from None
    from tuner.locking import check_backend

    check_backend(url)
    if parsed.drivername == "postgresql":  # SQLAlchemy's default driver, psycopg2, is not ours
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    db = sqlite_file(url)
    if db is not None:
        parent = db.parent
        if not parent.exists():
            if url == DEFAULT_URL:
                parent.mkdir(parents=True, exist_ok=True)
            else:
                raise UsageError(f"--storage: folder {parent} of {url!r} does not exist")
    return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other back ends and in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        return Path(u.database)
    return None


def open_storage(url: str, heartbeat: int | None = None) -> RDBStorage:
    """An Optuna RDB storage; SQLite gets a long lock timeout so concurrent writers wait, and
    a SQLite file commits without waiting for the disk (:func:`tuner.persist.fast_sqlite`).

    With ``heartbeat`` (seconds), a running trial records a heartbeat that often; one silent
    for twice *its own worker's* interval (its worker died) is failed and re-queued with the
    same params by the next worker that claims a trial (:mod:`tuner.trialqueue`).
    """
    from sqlalchemy.engine import make_url

    from tuner.persist import fast_sqlite

    kwargs: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}
    beat: dict[str, Any] = {}
    if heartbeat is not None:
        beat = {"heartbeat_interval": heartbeat}  # staleness: tuner.trialqueue.stale_trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(url, engine_kwargs=kwargs, **beat)
    if sqlite_file(url) is not None:
        fast_sqlite(storage.engine)
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
    """The study ``user_attrs`` of DESIGN.md's storage contract (plus a few extras)."""
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
                   "divergence_factor": spec.budget.divergence_factor},
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
        "spec_file": spec.path,
        "spec_text": spec.text,
        "spec_fingerprint": spec.fingerprint(),
        "spec_identity": json.loads(json.dumps(spec.identity(), default=str)),
    }


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
        stored = s.user_attrs.get("spec_identity", {})
        now = json.loads(json.dumps(spec.identity(), default=str))
        changed = [k for k in now if stored.get(k) != now[k]] or ["spec"]
        raise UsageError(
            f"{spec.path}: {changed[0]}: differs from the stored study {s.study_name!r}, which "
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
    n_trials = len(storage.get_all_trials(s._study_id, deepcopy=False))
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
        have = study.user_attrs
        # spec_name first (what check_ours recognises), spec_fingerprint last (what says done)
        attrs = study_attrs(spec, batch_size)
        for k in ("spec_name", *[k for k in attrs if k not in ("spec_name", "spec_fingerprint")],
                  "spec_fingerprint"):
            if have.get(k) != attrs[k]:
                study.set_user_attr(k, attrs[k])
    elif stored != spec.fingerprint():  # made meanwhile by a worker with another spec
        check_studies(storage, spec, (batch_size,))
    return study
