"""Stored studies -> plain records the analysis functions work on.

A spec argument is a spec file (its name and seed select the studies) or a spec name already in
storage. Nothing here writes: a storage that does not exist is an error, not a new empty file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import UsageError
from tuner.space import Param


@dataclass
class TrialRecord:
    """One stored trial, as analysis needs it."""

    number: int
    outcome: str  # reached | missed | pruned | diverged | failed | running
    params: dict[str, Any]
    steps_to_target: int | None = None
    steps_after: int | None = None  # the target was crossed in (steps_after, steps_to_target]
    stopped_at_step: int | None = None
    wall_seconds: float | None = None
    frozen: FrozenTrial | None = field(default=None, repr=False, compare=False)


@dataclass
class BatchStudy:
    """One batch-size study: its attrs and trials."""

    batch_size: int
    trials: list[TrialRecord]
    search_space: dict[str, Param] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    study_name: str = ""

    @property
    def max_steps(self) -> int | None:
        """The study's budget in steps."""
        return self.attrs.get("budget", {}).get("max_steps")


@dataclass
class SpecStudies:
    """All batch-size studies of one spec (and seed), sorted by batch size."""

    name: str
    seed: int
    target: dict[str, Any]
    studies: list[BatchStudy]
    attrs: dict[str, Any] = field(default_factory=dict)  # of the first study

    @property
    def batch_sizes(self) -> list[int]:
        """Batch sizes with a study."""
        return [s.batch_size for s in self.studies]


def outcome_of(t: FrozenTrial) -> str:
    """``reached`` | ``missed`` | ``pruned`` | ``diverged`` | ``failed`` | ``running``."""
    if t.state == TrialState.PRUNED:
        return "pruned"
    if t.state == TrialState.COMPLETE:
        if t.user_attrs.get("reached"):
            return "reached"
        return "diverged" if t.user_attrs.get("diverged") else "missed"
    return "running" if t.state in (TrialState.RUNNING, TrialState.WAITING) else "failed"


def record(t: FrozenTrial) -> TrialRecord:
    """A trial record from a stored Optuna trial."""
    a = t.user_attrs
    return TrialRecord(
        number=t.number, outcome=outcome_of(t), params=dict(t.params),
        steps_to_target=a.get("steps_to_target") if a.get("reached") else None,
        steps_after=a.get("steps_to_target_after"), stopped_at_step=a.get("stopped_at_step"),
        wall_seconds=a.get("wall_seconds"), frozen=t,
    )


def param_from_attr(name: str, attr: dict[str, Any]) -> Param:
    """A :class:`Param` from its stored ``search_space`` entry."""
    if "choices" in attr:
        return Param(name, choices=tuple(attr["choices"]))
    return Param(name, low=attr["low"], high=attr["high"], log=bool(attr.get("log")),
                 integer=bool(attr.get("int")))


def check_storage_exists(url: str) -> None:
    """Refuse to analyse a SQLite file that is not there (opening it would create it)."""
    from tuner.storage import sqlite_file

    db = sqlite_file(url)
    if db is not None and not db.exists():
        raise UsageError(f"--storage: no SQLite file at {db}; run `tuner run` first "
                         "or pass the storage the studies are in")


def load(storage: optuna.storages.BaseStorage, spec_arg: str, seed: int | None = None
         ) -> SpecStudies:
    """The studies of a spec file or stored spec name.

    Raises:
        UsageError: no such spec in storage, or several seeds and none chosen.
    """
    name = spec_arg
    if spec_arg.endswith(".toml") or Path(spec_arg).is_file():
        from tuner import spec as spec_mod

        spec = spec_mod.load(spec_arg)
        name, seed = spec.name, spec.seed if seed is None else seed
    summaries = [s for s in storage.get_all_studies() if s.user_attrs.get("spec_name") == name]
    if not summaries:
        known = sorted({s.user_attrs.get("spec_name", "?") for s in storage.get_all_studies()})
        raise UsageError(f"{spec_arg}: no studies of spec {name!r} in this storage; stored specs: "
                         f"{', '.join(known) or 'none'}")
    seeds = sorted({s.user_attrs.get("seed", 0) for s in summaries})
    if seed is None:
        if len(seeds) > 1:
            raise UsageError(f"{spec_arg}: studies with seeds {seeds}; choose one with --seed")
        seed = seeds[0]
    summaries = [s for s in summaries if s.user_attrs.get("seed", 0) == seed]
    if not summaries:
        raise UsageError(f"{spec_arg}: no studies with seed {seed}; stored seeds: {seeds}")
    studies = []
    for s in sorted(summaries, key=lambda s: s.user_attrs["batch_size"]):
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        space = {k: param_from_attr(k, v) for k, v in s.user_attrs.get("search_space", {}).items()}
        studies.append(BatchStudy(s.user_attrs["batch_size"], [record(t) for t in trials], space,
                                  dict(s.user_attrs), s.study_name))
    first = studies[0].attrs
    return SpecStudies(name, seed, first.get("target", {}), studies, first)


def finite(x: float | None) -> bool:
    """Whether ``x`` is a finite number."""
    return x is not None and math.isfinite(x)
