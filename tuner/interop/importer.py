"""``tuner import batch-science``: batch_science study directories -> Optuna studies with our
attrs, so that ``curve``, ``edges``, ``sensitivity``, ``profile`` and ``report`` read them as
they read our own (docs/DESIGN.md, "batch_science import and export").

Mapping (one Optuna study per batch size, named ``NAME.B<batch>.seed0``):

- ``COMPLETE`` -> COMPLETE, ``reached`` at the first evaluation that meets the stored target
  (else ``missed``); ``INFEASIBLE`` (diverged at some point) -> COMPLETE with
  ``diverged = true``; ``INCOMPLETE`` -> FAIL (``fail_reason`` says so): counted nowhere, as
  batch_science's loaders skip both by default. An ``INFEASIBLE`` trial never counts as
  reaching a goal: its measurements are kept (attr ``measurements``) but its ``curve`` is
  empty, so re-scoring at any target leaves it ``diverged``.
- Every ``measurements.csv`` column is stored at every evaluation (the ``curve`` attr), so
  ``--target`` re-scores at any metric, with batch_science's strict ``<`` too.
- The study's budget is the longest trial (or ``train_steps`` when longer): their
  ``compute_steps_to_result`` uses every measurement, also past ``train_steps``.
- Default target: ``val/classification_error`` (else the first ``val/`` column, else the first
  column), at the loosest value every batch size reached: the largest, over batch sizes, of the
  best value of a ``COMPLETE`` trial (smallest when maximizing).

An import writes nothing until every directory has been read and checked. Each study is
written in three steps (attrs, then all its trials in one transaction, then
``spec_fingerprint``, which marks it complete), so a killed import leaves at most one study
without its fingerprint: analysis skips it, and the next import replaces it. Importing the
same directory again adds nothing; importing other data under a stored name is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.analysis.records import param_from_attr
from tuner.core.errors import UsageError
from tuner.core.goal import Goal
from tuner.interop import batch_science as bs
from tuner.store.compat import study_id
from tuner.store.persist import store_trials
from tuner.store.storage import versions, write_study_attrs

#: The workload attr of an imported study.
WORKLOAD = "batch_science"
DEFAULT_METRIC = "val/classification_error"


@dataclass
class Imported:
    """What one workload's import did."""

    name: str
    source: str  # the workload directory, relative to the imported root
    goal: Goal
    batch_sizes: list[int]
    n_trials: int
    statuses: dict[str, int]  # batch_science status -> count
    already: bool  # every study was there already: nothing written


def default_metric(columns: set[str]) -> str:
    """``val/classification_error`` if measured, else the first ``val/`` column, else the
    first column (sorted)."""
    if DEFAULT_METRIC in columns:
        return DEFAULT_METRIC
    val = sorted(c for c in columns if c.startswith("val/"))
    return val[0] if val else sorted(columns)[0]


@dataclass
class Summary:
    """What the first pass keeps of a study (its measurements are read again to write it)."""

    path: Path
    batch_size: int
    content: str  # fingerprint of everything read
    columns: set[str]
    lowest: dict[str, float]  # per column: the smallest finite value of a COMPLETE trial
    highest: dict[str, float]
    n_trials: int
    statuses: dict[str, int]


def summarise(study: bs.Study) -> Summary:
    """A study's :class:`Summary`."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    statuses: dict[str, int] = {}
    for t in study.trials:
        statuses[t.status] = statuses.get(t.status, 0) + 1
        if t.status != "COMPLETE":
            continue
        for i, c in enumerate(t.columns):
            vals = [r[i] for r in t.rows if r[i] is not None and math.isfinite(r[i])]
            if vals:
                lo[c] = min(lo.get(c, math.inf), min(vals))
                hi[c] = max(hi.get(c, -math.inf), max(vals))
    return Summary(study.path, study.batch_size, content_of(study),
                   {c for t in study.trials for c in t.columns}, lo, hi, len(study.trials),
                   statuses)


def default_goal(studies: list[Summary], metric: str | None = None) -> Goal:
    """The loosest target every batch size reached (see the module doc); the metric is
    :func:`default_metric` unless given.

    Raises:
        UsageError: no trial measured the metric, or no ``COMPLETE`` trial has a value of it.
    """
    columns = {c for s in studies for c in s.columns}
    if not columns:
        raise UsageError(f"{studies[0].path.parent}: no trial has any measurement")
    metric = metric or default_metric(columns)
    maximize = "accuracy" in metric
    bests = [(s.highest if maximize else s.lowest)[metric] for s in studies
             if metric in (s.highest if maximize else s.lowest)]
    if not bests:
        raise UsageError(f"{studies[0].path.parent}: no COMPLETE trial measured {metric!r}; "
                         "give --target")
    return Goal(metric, ">=" if maximize else "<=", min(bests) if maximize else max(bests))


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, BaseDistribution]:
    """Our ``search_space`` attr -> Optuna distributions."""
    return {k: param_from_attr(k, v).distribution() for k, v in space.items()}


def widened(space: dict[str, dict[str, Any]], study: bs.Study
            ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The space widened to hold every trial's value (published values sometimes lie a rounding
    error outside the published range), with a warning line per widened parameter."""
    configs = study.meta["parameter_configs"]
    out = json.loads(json.dumps(space))
    notes = []
    for name, c in configs.items():
        key = bs.our_name(name, c)
        p = out[key]
        if "choices" in p:
            for t in study.trials:
                v = t.metadata["parameters"].get(name)
                if v is not None and v not in p["choices"]:
                    p["choices"].append(v)
                    notes.append(f"{study.path}: trial {t.trial_id}: {name} = {v!r} is not a "
                                 "feasible point; added to the choices")
            continue
        vals = [bs.our_value(c, t.metadata["parameters"][name]) for t in study.trials
                if name in t.metadata["parameters"]]
        lo, hi = min(vals, default=p["low"]), max(vals, default=p["high"])
        if lo < p["low"] or hi > p["high"]:
            notes.append(f"{study.path}: {key}: trial values span [{lo:.6g}, {hi:.6g}], "
                         f"outside the published [{p['low']:.6g}, {p['high']:.6g}]; widened")
            p["low"], p["high"] = min(lo, p["low"]), max(hi, p["high"])
    return out, notes


def budget_of(study: bs.Study) -> int:
    """The study's budget in steps: the longest trial, or ``train_steps`` when longer."""
    return max([int(study.meta.get("train_steps") or 0),
                *[stopped_at(t) for t in study.trials if t.status != "INCOMPLETE"]], default=0)


def stopped_at(t: bs.Trial) -> int:
    """Where a trial stopped: its ``steps``, or its last measurement when later."""
    return max([int(t.metadata.get("steps") or 0), *t.steps[-1:]])


def trial_of(study: bs.Study, t: bs.Trial, goal: Goal, budget: int,
             dists: dict[str, BaseDistribution]) -> FrozenTrial:
    """One batch_science trial as a finished Optuna trial with our user attrs (section 4 of
    docs/DESIGN.md, plus ``trial_id``, ``status``, ``metadata``, ``measurements``)."""
    configs = study.meta["parameter_configs"]
    params = {bs.our_name(k, configs[k]): bs.our_value(configs[k], v)
              for k, v in t.metadata["parameters"].items()}
    measured = t.curve()
    curve = {"steps": [], "metrics": {}} if t.status == "INFEASIBLE" else measured
    values = curve["metrics"].get(goal.metric, [])
    hit = next((i for i, v in enumerate(values) if goal.met(v)), None)
    reached = t.status == "COMPLETE" and hit is not None
    steps = stopped_at(t)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    outcome = ("reached" if reached else "diverged" if t.status == "INFEASIBLE"
               else "missed" if t.status == "COMPLETE" else "failed")
    attrs: dict[str, Any] = {
        "slot": t.trial_id, "trial_id": t.trial_id, "status": t.status,
        "metadata": t.metadata, "reached": reached,
        "steps_to_target": curve["steps"][hit] if reached and hit is not None else None,
        "steps_to_target_after": (curve["steps"][hit - 1] if hit else 0) if reached else None,
        "diverged": t.status == "INFEASIBLE", "stopped_at_step": steps,
        "examples_seen": steps * study.batch_size, "wall_seconds": None,
        "best_metric": (max(finite) if goal.direction == "maximize" else min(finite))
        if finite else None,
        "final_metrics": dict(zip(t.columns, t.rows[-1])) if t.rows else None,
        "curve": curve, "max_steps": budget, "outcome": outcome,
        "device": "unknown (batch_science import)",
    }
    if t.status == "INFEASIBLE":
        attrs["measurements"] = measured
    state = TrialState.FAIL if t.status == "INCOMPLETE" else TrialState.COMPLETE
    system = {"constraints:reached": 0.0 if reached else 1.0}
    if state == TrialState.FAIL:
        system = {"fail_reason": "batch_science status INCOMPLETE (not counted, as in "
                                 "batch_science's loaders)"}
    value = None if state == TrialState.FAIL else float(
        attrs["steps_to_target"] if reached else budget)
    inter = {int(s): float(v) for s, v in zip(curve["steps"], values)
             if v is not None and math.isfinite(v)}
    return optuna.trial.create_trial(
        state=state, value=value, params=params,
        distributions={k: dists[k] for k in params}, user_attrs=attrs, system_attrs=system,
        intermediate_values=inter)


def fingerprint(obj: Any) -> str:
    """16 hex digits of sha256 over ``obj``'s canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_of(study: bs.Study) -> str:
    """The fingerprint of everything read from a study directory."""
    return fingerprint({"study": study.meta, "trials": [(t.metadata, t.columns, t.steps, t.rows)
                                                        for t in study.trials]})


def identity(source: str, content: str, goal: Goal) -> dict[str, Any]:
    """An imported study's ``spec_identity``: where it came from, what it held, the target."""
    return {"imported_from": WORKLOAD, "source": source, "target": goal.as_target(),
            "content": content}


def study_attrs(name: str, source: str, study: bs.Study, content: str, goal: Goal, budget: int,
                space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The study user attrs of docs/DESIGN.md's storage contract, filled from ``study.json``
    (plus ``imported_from`` and ``study_json``). ``spec_fingerprint`` (last) hashes the
    study's content (``content``: :func:`content_of` the study) and the target."""
    meta = study.meta
    steps = [s for t in study.trials for s in t.steps]
    n_evals = sorted(len(t.steps) for t in study.trials) or [0]
    ident = identity(source, content, goal)
    return {
        "spec_name": name, "batch_size": study.batch_size, "seed": 0, "workload": WORKLOAD,
        "workload_options": {"dataset": meta["dataset"], "model": meta["model"],
                             "source": source},
        "optimizer": meta["optimizer"], "schedule": "as published (see parameter_configs)",
        "fixed_params": {}, "target": goal.as_target(),
        "budget": {"max_steps": budget, "derived_from": (
            f"batch_science: the longest trial (train_steps = {meta.get('train_steps')}: the "
            "steps a trial needed to count as COMPLETE)"), "divergence_factor": None},
        "search_space": space,
        "sampler": {"name": "as published (batch_science)", "seed": None, "options": {}},
        "pruner": {"name": "early stopping (batch_science)" if meta.get("early_stopping")
                   else "none", "slack": None, "lossless": False, "options": {}},
        "eval_cadence": {"first_step": min(steps, default=0), "relative": None,
                         "min_interval": None, "max_share": None,
                         "n_evals": n_evals[len(n_evals) // 2], "first_step_here": None,
                         "min_interval_here": None,
                         "resolution": "as published: steps-to-target is the first recorded "
                                       "evaluation at or past the crossing (batch_science "
                                       "evaluated at uneven intervals)"},
        "precision": "unknown (batch_science)", "versions": versions(),
        "imported_from": {"format": WORKLOAD, "source": source, "path": str(study.path)},
        "study_json": meta, "spec_file": str(study.path / "study.json"),
        "spec_text": json.dumps(meta, indent=2, sort_keys=True),
        "spec_identity": ident, "spec_fingerprint": fingerprint(ident),
    }


def parse_target(goal: Goal | None, studies: list[Summary]) -> Goal:
    """``--target``, checked against the measured columns, or :func:`default_goal`.

    Raises:
        UsageError: the metric is not measured.
    """
    columns = {c for s in studies for c in s.columns}
    if goal is None:
        return default_goal(studies)
    if goal.metric not in columns:
        raise UsageError(f"--target {goal}: {studies[0].path.parent} has no column "
                         f"{goal.metric!r}; allowed: {', '.join(sorted(columns))}")
    return goal


def spec_name_of(source: str, name: str | None, several: bool) -> str:
    """The stored spec name: ``--name`` (a prefix ``NAME.`` when importing several workloads),
    else the workload's path with ``.`` for ``/`` (``fashion_mnist.simple_cnn_base.sgd``)."""
    path = source.replace("/", ".") if source != "." else ""
    if name and several:
        return f"{name}.{path}"
    return name or path or "batch_science"


@dataclass
class Planned:
    """One workload, read and checked: what the import will write."""

    name: str
    source: str
    goal: Goal
    studies: list[Summary]

    def study_name(self, s: Summary) -> str:
        """The Optuna study name of one of its batch sizes."""
        return f"{self.name}.B{s.batch_size}.seed0"

    def fingerprint(self, s: Summary) -> str:
        """The ``spec_fingerprint`` that study gets."""
        return fingerprint(identity(self.source, s.content, self.goal))


def plan(root: Path, name: str | None, goal: Goal | None) -> list[Planned]:
    """Every workload under ``root`` read and checked, one study at a time (the archive is
    gigabytes: only a :class:`Summary` of each is kept; the import reads it again).

    Raises:
        UsageError: any directory that does not follow the layout; nothing has been written.
    """
    found = bs.find_workloads(root)
    out = []
    for source, dirs in found.items():
        studies = [summarise(bs.read_study(d)) for d in dirs]
        sizes = [s.batch_size for s in studies]
        if len(set(sizes)) != len(sizes):
            dup = next(b for b in sizes if sizes.count(b) > 1)
            raise UsageError(f"{root / source}: two study directories with batch_size {dup}")
        out.append(Planned(spec_name_of(source, name, len(found) > 1), source,
                           parse_target(goal, studies), studies))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise UsageError(f"--name {name}: two workloads would get one name")
    return out


def import_batch_science(storage: RDBStorage, work: list[Planned],
                         echo: Callable[[str], None] = lambda s: None) -> list[Imported]:
    """Import the workloads of ``work`` (:func:`plan`: read and checked first, before the
    storage is even opened) into ``storage`` (see the module doc).

    Raises:
        UsageError: a stored study of one of these names holds other data (before anything
            is written), or a directory changed since :func:`plan` read it.
    """
    existing = {s.study_name: s for s in storage.get_all_studies()}
    todo: list[tuple[Planned, Summary, bool]] = []
    for w in work:
        for s in w.studies:
            old = existing.get(w.study_name(s))
            if old is not None:
                have = old.user_attrs
                if have.get("spec_fingerprint") == w.fingerprint(s):
                    continue  # imported already
                if "spec_fingerprint" in have or have.get("imported_from", {}).get(
                        "source") != w.source:
                    raise UsageError(
                        f"--name {w.name}: study {w.study_name(s)!r} is already stored with "
                        f"other data (another import, target or version of {w.source}, or a "
                        "`tuner run` study); choose another --name or --storage")
            todo.append((w, s, old is not None))
    done: set[str] = set()
    for w, s, stale in todo:
        st = bs.read_study(s.path)
        if content_of(st) != s.content:
            raise UsageError(f"{s.path}: changed while being imported; import it again")
        space, notes = widened(bs.search_space(st.meta["parameter_configs"]), st)
        for n in notes:
            echo(f"warning: {n}")
        budget = budget_of(st)
        attrs = study_attrs(w.name, w.source, st, s.content, w.goal, budget, space)
        if stale:  # a study a killed import left without its fingerprint: replace it
            optuna.delete_study(study_name=w.study_name(s), storage=storage)
        study = optuna.create_study(storage=storage, study_name=w.study_name(s),
                                    direction="minimize")
        write_study_attrs(study, attrs, fingerprint=False)
        dists = distributions(space)
        trials = [trial_of(st, t, w.goal, budget, dists) for t in st.trials]
        store_trials(storage, study_id(study), trials, {})
        study.set_user_attr("spec_fingerprint", attrs["spec_fingerprint"])
        done.add(w.name)
    out = []
    for w in work:
        statuses: dict[str, int] = {}
        for s in w.studies:
            for k, v in s.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        out.append(Imported(w.name, w.source, w.goal, [s.batch_size for s in w.studies],
                            sum(s.n_trials for s in w.studies), statuses,
                            already=w.name not in done))
    return out
