"""Stored Optuna studies -> the plain records of :mod:`tuner.analysis.records`.

A spec argument is a spec file (its name and seed select the studies) or a spec name already in
storage. Nothing here writes: a storage that does not exist is an error, not a new empty file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import spec as spec_mod
from tuner.analysis.records import BatchStudy, SpecStudies, TrialRecord, param_from_attr
from tuner.core.errors import UsageError
from tuner.store.compat import study_id
from tuner.store.rows import Reader, StoredTrial, gc_paused
from tuner.store.storage import changed_key, first_difference, sqlite_file


#: A stored trial as analysis reads it: Optuna's, or the SQL reader's (the same attributes).
Trialish = FrozenTrial | StoredTrial


def outcome_of(t: Trialish) -> str:
    """``reached`` | ``missed`` | ``pruned`` | ``diverged`` | ``failed`` | ``running``."""
    if t.state == TrialState.PRUNED:
        return "pruned"
    if t.state == TrialState.COMPLETE:
        if t.user_attrs.get("reached"):
            return "reached"
        return "diverged" if t.user_attrs.get("diverged") else "missed"
    return "running" if t.state in (TrialState.RUNNING, TrialState.WAITING) else "failed"


def curve_of(t: Trialish, target_metric: str | None) -> dict[str, Any] | None:
    """The trial's measured curve: its ``curve`` attr, or (studies stored before every metric
    was kept) the target metric's intermediate values; None when neither is there."""
    stored = t.user_attrs.get("curve")
    if isinstance(stored, dict) and "steps" in stored:
        return stored
    if not t.intermediate_values or not target_metric:
        return None
    steps = sorted(t.intermediate_values)
    return {"steps": steps, "metrics": {target_metric: [t.intermediate_values[s] for s in steps]}}


def record(t: Trialish, target_metric: str | None = None, curve: bool = True) -> TrialRecord:
    """A trial record from a stored Optuna trial (``target_metric``: the study's, which names
    the intermediate values of studies stored before the ``curve`` attr; without ``curve``,
    the record's ``curve`` is None: not read)."""
    a = t.user_attrs
    return TrialRecord(
        number=t.number, outcome=outcome_of(t), params=dict(t.params),
        steps_to_target=a.get("steps_to_target") if a.get("reached") else None,
        steps_after=a.get("steps_to_target_after"), stopped_at_step=a.get("stopped_at_step"),
        wall_seconds=a.get("wall_seconds"), slot=slot_of(t),
        eval_seconds=a.get("eval_seconds"), step_seconds=a.get("step_seconds"),
        device=a.get("device"), at_target=a.get("at_target"),
        at_once=a.get("trials_at_once"),
        value=t.value if t.state == TrialState.COMPLETE else None,
        curve=curve_of(t, target_metric) if curve else None,
    )


#: The trial user attrs analysis reads (:func:`record`, :func:`has_result`, :func:`slot_of`,
#: :func:`curve_of`, :func:`outcome_of`): the SQL reader reads only these.
ANALYSIS_ATTRS = ("reached", "diverged", "steps_to_target", "steps_to_target_after",
                  "stopped_at_step", "wall_seconds", "eval_seconds", "step_seconds", "device",
                  "slot", "retry_of", "at_target", "trials_at_once")
#: ... and for re-scoring, the stored curve (the largest attr by far).
CURVE_ATTRS = ("curve",)


def slot_of(t: Trialish) -> int:
    """The trial's slot: its user attr ``slot`` (tuner.run.trialqueue); in studies of tuner
    0.1.0 the trial it retried (``retry_of``), else its number."""
    a = t.user_attrs
    return int(a.get("slot", a.get("retry_of", t.number)))


def has_result(t: Trialish) -> bool:
    """Whether a trial carries what analysis reads: a COMPLETE trial its ``reached`` attr (and
    an integer ``steps_to_target`` when reached). Pruned and unfinished trials always do."""
    if t.state != TrialState.COMPLETE:
        return True
    a = t.user_attrs
    if "reached" not in a:
        return False
    return not a["reached"] or isinstance(a.get("steps_to_target"), int)


def distinct_slots(trials: list[Trialish]) -> tuple[list[Trialish], int]:
    """The trials with each slot finished at most once, and how many finished trials were set
    aside.

    Rule: of the finished (COMPLETE or PRUNED) trials of one slot, the first finished one is
    kept, i.e. the one with the earliest ``datetime_complete`` (the trial number breaks ties and
    stands in when no time is stored). It is what the study held when that slot first counted;
    the later ones re-ran the same point because of a queue bug in older versions
    (issue 13). Unfinished trials (failed, running, waiting) are kept: they are not results.
    """
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    first: dict[int, Trialish] = {}
    for t in sorted(finished, key=lambda t: (t.datetime_complete is None,
                                             t.datetime_complete or 0, t.number)):
        first.setdefault(slot_of(t), t)
    keep = {t.number for t in first.values()}
    out = [t for t in trials if t.number in keep
           or t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    return out, len(finished) - len(first)


def check_storage_exists(url: str) -> None:
    """Refuse to analyse a SQLite file that is not there (opening it would create it)."""
    db = sqlite_file(url)
    if db is not None and not db.exists():
        raise UsageError(f"--storage: no SQLite file at {db}; run `tuner run` first "
                         "or pass the storage the studies are in")


#: The study attrs every version of ``tuner run`` writes (tuner.store.storage.study_attrs), in the
#: order it writes them; a study without one of them was stopped while being created.
STUDY_ATTRS = ("spec_name", "batch_size", "seed", "workload", "workload_options", "optimizer",
               "schedule", "fixed_params", "target", "budget", "search_space", "sampler",
               "pruner", "eval_cadence", "precision", "versions", "spec_file", "spec_text",
               "spec_fingerprint", "spec_identity")


def missing_attrs(attrs: dict[str, Any]) -> list[str]:
    """The :data:`STUDY_ATTRS` a study lacks (none for a complete study)."""
    return [k for k in STUDY_ATTRS if k not in attrs]


def check_unchanged(spec: Any, summaries: list[optuna.study.StudySummary]) -> None:
    """Refuse to show studies stored from another version of the spec file ``spec``.

    Raises:
        UsageError: naming the file and the first part of the spec that changed.
    """
    mine = spec.fingerprint() if spec.workload is not None else None
    for s in sorted(summaries, key=lambda s: s.user_attrs["batch_size"]):
        if mine is not None:
            key = None if s.user_attrs["spec_fingerprint"] == mine else changed_key(
                spec, s.user_attrs)
        elif s.user_attrs.get("spec_text") == spec.text:
            key = None
        else:
            key = first_difference(spec, s.user_attrs)
        if key is None:
            continue
        raise UsageError(
            f"{spec.path}: {key}: differs from the stored study {s.study_name!r}: the "
            f"file was edited since its studies were stored; restore it, or analyse the stored "
            f"studies by name ({spec.name!r} instead of the file)")


def load(storage: optuna.storages.BaseStorage | Reader, spec_arg: str, seed: int | None = None,
         curves: bool = True) -> SpecStudies:
    """The studies of a spec file or stored spec name, from a :class:`tuner.store.rows.Reader`
    (a few SQL queries: :func:`tuner.store.rows.open_reader`) or an Optuna storage (its API:
    the same records, slower). Without ``curves`` the records carry no stored curve
    (``curve`` None, not read): all that analysis needs but re-scoring.

    Incomplete studies (stopped while being created: see :data:`STUDY_ATTRS`) are left out,
    finished trials without their result attrs too, and of several finished trials of one
    slot only the first counts (:func:`distinct_slots`); each case adds a line to
    ``warnings``.

    Raises:
        UsageError: no such spec in storage, several seeds and none chosen, or the spec file
            differs from the one the studies were stored from.
    """
    spec = None
    if is_file_arg(spec_arg):
        spec = spec_mod.load(spec_arg)  # the file alone: no workload import, no data
    return load_spec(storage, spec or spec_arg, seed, curves)


def is_file_arg(spec_arg: str) -> bool:
    """Whether a SPEC argument names a spec file (else it is a stored spec name)."""
    return spec_arg.endswith(".toml") or Path(spec_arg).is_file()


def load_all(storage: optuna.storages.BaseStorage | Reader, spec_arg: str,
             seed: int | None = None, curves: bool = True) -> list[SpecStudies]:
    """:func:`load` for a SPEC argument that may stand for a series (``[series]``,
    :mod:`tuner.spec.series`): its file, or its name as stored (the study attr
    ``series.name``); one entry per member in the file's order (stored: by value). Any other
    argument gives one entry.

    Raises:
        UsageError: as :func:`load`, for any member.
    """
    if is_file_arg(spec_arg):
        return [load_spec(storage, m, seed, curves) for m in spec_mod.load_series(spec_arg)]
    everything = storage.get_all_studies()
    if any(s.user_attrs.get("spec_name") == spec_arg for s in everything):
        return [load_spec(storage, spec_arg, seed, curves)]
    member = {s.user_attrs["spec_name"]: s.user_attrs["series"] for s in everything
              if isinstance(s.user_attrs.get("series"), dict)
              and s.user_attrs["series"].get("name") == spec_arg and "spec_name" in s.user_attrs}
    if not member:
        return [load_spec(storage, spec_arg, seed, curves)]  # its error names what is stored

    def order(name: str) -> tuple[int, Any, str]:
        v = member[name].get("value")
        return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))

    return [load_spec(storage, n, seed, curves) for n in sorted(member, key=order)]


def stored_trials(storage: optuna.storages.BaseStorage | Reader, study_ids: list[int],
                  keys: tuple[str, ...], curves: bool) -> Iterator[list[Any]]:
    """Every trial of each of the studies ``study_ids``, a list per study in that order (trials
    in trial-id order): read at once with the SQL reader (the user attrs ``keys``;
    intermediate values with ``curves``), or study by study through Optuna's
    ``get_all_trials`` from any other storage, so that one study's ``FrozenTrial``s at a time
    are held (10,000 NQM trials: a peak of 198 MB instead of 256 MB)."""
    if isinstance(storage, Reader):
        rows = storage.read_trials(study_ids, keys, intermediate=curves)
        return (rows[i] for i in study_ids)
    return (storage.get_all_trials(i, deepcopy=False) for i in study_ids)


def load_spec(storage: optuna.storages.BaseStorage | Reader, spec: Any, seed: int | None = None,
              curves: bool = True) -> SpecStudies:
    """:func:`load` for a spec read from its file (a :class:`tuner.spec.Spec`: its name and
    seed select the studies, which must come from the same file) or a stored spec name."""
    name = spec
    if not isinstance(spec, str):
        if seed is not None and seed != spec.seed:
            spec = spec_mod.with_seed(spec, seed)
        name, seed = spec.name, spec.seed
    else:
        spec = None
    everything = storage.get_all_studies()
    summaries = [s for s in everything if s.user_attrs.get("spec_name") == name]
    spec_arg = name if spec is None else spec.path if not spec.series else f"{spec.path} ({name})"
    if not summaries:
        known = sorted({s.user_attrs.get("spec_name", "?") for s in everything})
        raise UsageError(f"{spec_arg}: no studies of spec {name!r} in this storage; stored specs: "
                         f"{', '.join(known) or 'none'}")
    warn: list[str] = []
    skipped = []
    for s in summaries:
        gone = missing_attrs(s.user_attrs)
        if gone:
            skipped.append(s.study_name)
            warn.append(f"warning: skipping study {s.study_name!r}: incomplete (no "
                        f"{', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}): it was "
                        "stopped while being created; `tuner run` completes it")
    summaries = [s for s in summaries if s.study_name not in skipped]
    if not summaries:
        raise UsageError(f"{spec_arg}: no complete studies of spec {name!r} in this storage "
                         f"({len(skipped)} incomplete: stopped while being created); run "
                         "`tuner run` on the spec to complete them")
    seeds = sorted({s.user_attrs["seed"] for s in summaries})
    if seed is None:
        if len(seeds) > 1:
            raise UsageError(f"{spec_arg}: studies with seeds {seeds}; choose one with --seed")
        seed = seeds[0]
    summaries = [s for s in summaries if s.user_attrs["seed"] == seed]
    if not summaries:
        raise UsageError(f"{spec_arg}: no studies with seed {seed}; stored seeds: {seeds}")
    if spec is not None:
        check_unchanged(spec, summaries)
    summaries = sorted(summaries, key=lambda s: s.user_attrs["batch_size"])
    with gc_paused():  # tens of thousands of records: see tuner.store.rows.gc_paused
        keys = ANALYSIS_ATTRS + (CURVE_ATTRS if curves else ())
        rows = stored_trials(storage, [study_id(s) for s in summaries], keys, curves)
        studies = []
        for s, stored in zip(summaries, rows):
            usable = [t for t in stored if has_result(t)]
            trials, n_dup = distinct_slots(usable)
            space = {k: param_from_attr(k, v) for k, v in s.user_attrs["search_space"].items()}
            metric = s.user_attrs.get("target", {}).get("metric")
            records = [record(t, metric, curves) for t in trials]
            st = BatchStudy(s.user_attrs["batch_size"], records, space, dict(s.user_attrs),
                            s.study_name, n_duplicates=n_dup,
                            n_incomplete_trials=len(stored) - len(usable))
            if st.n_incomplete_trials:
                warn.append(f"warning: study {s.study_name!r}: left out "
                            f"{st.n_incomplete_trials} finished trial(s) without their result "
                            "attrs (reached, steps_to_target)")
            if n_dup:
                warn.append(f"warning: study {s.study_name!r}: set aside {n_dup} duplicate "
                            "finished trial(s) of slots that had already finished (kept the "
                            "first finished trial of each slot); this storage was written by an "
                            "older version of tuner, which could run one slot many times")
            studies.append(st)
        first = studies[0].attrs
        return SpecStudies(name, seed, first.get("target", {}), studies, first, warn, skipped)
