"""Study specs: a TOML file -> a validated, typed :class:`Spec`.

Every problem is a :class:`~tuner.core.errors.SpecError` naming the file, the key and what is allowed.
Loading a spec touches no storage. See ``studies/README.md`` for the format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from tuner.core.errors import SpecError
from tuner.core.goal import Goal
from tuner.core.space import PARAM_BOUNDS, Param
from tuner.core.trial import Target
from tuner.spec import series as series_mod
from tuner.spec.cadence import eval_steps, share_interval
from tuner.spec.series import Series
from tuner.spec.optimizers import (
    GENERIC_PACKAGES,
    INTEGER_PARAMS,
    MODULE_OPTIMIZER,
    OPTIMIZERS,
    OPTIONAL_PARAMS,
    SCHEDULE_KEYS,
    SCHEDULE_PARAMS,
    SCHEDULES,
    allowed_params,
    generic,
    is_identifier,
)

#: ``resolve(name)`` -> the workload class a spec's ``[workload] name`` stands for (raises
#: KeyError with a message listing what is allowed).
Resolver = Callable[[str], type]

SAMPLERS = ("qmc", "tpe", "random")
OPTUNA_PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
}
PRUNERS = ("lossless", "none", *OPTUNA_PRUNERS)
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
DIRECTIONS = ("minimize", "maximize")

#: Seeds numpy (and so Optuna's samplers and the trial seeds) accept.
SEED_MAX = 2**32 - 1
#: The most steps a budget may have: Optuna stores a reported step in a 32-bit INTEGER column
#: (``trial_intermediate_values.step``; PostgreSQL refuses larger values).
MAX_STEPS = 2**31 - 1
#: The longest spec name: a study is named ``NAME.B<batch size>.seed<seed>`` in Optuna's
#: 512-character ``study_name`` column.
MAX_NAME = 200

#: The workload a ``[workload] module = "..."`` spec names: a user's LightningModule, run by
#: Lightning's Trainer (:mod:`tuner.workload.lightning`).
LIGHTNING = "lightning"
#: Searched constructor arguments of a LightningModule spec: ``"module.dropout"``.
ARG_PREFIXES = ("module.", "datamodule.")

TOP_KEYS = ("name", "description", "seed", "batch_sizes", "trials", "workload", "optimizer",
            "search_space", "target", "budget", "eval", "sampler", "pruner", "trainer",
            "series")


@dataclass(frozen=True)
class Budget:
    """Max steps per trial: fixed, a rule in B, or epochs converted to steps for each B."""

    max_steps: int | None = None
    max_epochs: float | None = None
    reference_batch_size: int | None = None  # rule: max_steps at this B ...
    scaling_power: float = 1.0  # ... times (reference_batch_size / B) ** scaling_power
    min_steps: int = 1
    divergence_factor: float = 100.0  # diverged when loss > this x the first loss
    #: Every trial trains its whole budget, past the target (``tuner curve --quality``: the
    #: best metric within any budget is then exact); no pruning.
    train_to_budget: bool = False

    def steps_for(self, batch_size: int, n_train: int) -> int:
        """The budget in steps at ``batch_size`` (``n_train`` converts epochs)."""
        if self.max_epochs is not None:
            steps = math.ceil(self.max_epochs * n_train / batch_size)
        elif self.reference_batch_size is not None:
            assert self.max_steps is not None
            ratio = (self.reference_batch_size / batch_size) ** self.scaling_power
            steps = math.ceil(self.max_steps * ratio)
        else:
            assert self.max_steps is not None
            steps = self.max_steps
        return max(self.min_steps, steps)

    def rule(self) -> str:
        """How the budget is derived, in words (stored with each study)."""
        if self.max_epochs is not None:
            return f"ceil({self.max_epochs} epochs x n_train / B), at least {self.min_steps}"
        if self.reference_batch_size is not None:
            return (f"ceil({self.max_steps} x ({self.reference_batch_size} / B)^"
                    f"{self.scaling_power}), at least {self.min_steps}")
        return f"{self.max_steps} steps at every B"


@dataclass(frozen=True)
class Cadence:
    """Evaluation cadence; see :mod:`tuner.spec.cadence`."""

    first_step: int = 10
    relative: float = 0.02
    min_interval: int = 10
    max_share: float | None = None  # evaluation's share of a trial, bounded by spacing evaluations


@dataclass(frozen=True)
class SamplerSpec:
    """Which Optuna sampler proposes metaparameters."""

    name: str = "qmc"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerSpec:
    """Lossless pruning (``slack`` x best steps so far) and/or one of Optuna's pruners."""

    name: str = "lossless"
    slack: float = 1.0
    lossless: bool = True
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """A validated study spec. One spec -> one Optuna study per batch size."""

    path: str
    text: str
    name: str
    description: str
    seed: int
    batch_sizes: tuple[int, ...]
    trials: int
    workload_name: str
    workload_options: dict[str, Any]  # as the file gives them (the bound workload fills defaults)
    optimizer: str
    schedule: str
    fixed: dict[str, Any]
    space: tuple[Param, ...]
    target: Target
    budget: Budget
    cadence: Cadence
    sampler: SamplerSpec
    pruner: PrunerSpec
    accelerator: str = "auto"
    precision: str = "32-true"
    devices: int = 1  # > 1: one trial trains with DDP on this many devices
    trials_at_once: int = 1  # > 1: a worker trains this many trials as one vectorised model
    #: Extra goals (``[target] also``): trials train until they meet every one (or the budget
    #: ends), so re-scoring at each is exact; the lossless pruner is lossless for each.
    also: tuple[Goal, ...] = ()
    #: The series this spec is a member of (``[series]``, :mod:`tuner.spec.series`), or None.
    series: Series | None = None
    #: The workload instance once the spec is bound (:func:`tuner.run.specs.load`); None for a
    #: spec read without its workload (analysis).
    workload: Any = field(default=None, compare=False, repr=False)

    def bound(self) -> Any:
        """The workload; a spec read without it (analysis) cannot answer workload questions."""
        if self.workload is None:
            raise RuntimeError(f"{self.path}: spec read without its workload; load it with "
                               "tuner.run.specs.load to run it")
        return self.workload

    def space_by_name(self) -> dict[str, Param]:
        """The searched parameters by name (``space`` is a tuple in the file's order)."""
        return {p.name: p for p in self.space}

    def max_steps(self, batch_size: int) -> int:
        """Budget in steps at this batch size."""
        return self.budget.steps_for(batch_size, self.bound().num_train_examples())

    def eval_spacing(self, batch_size: int) -> tuple[int, int]:
        """(first evaluation step, fewest steps between evaluations) at this batch size: the
        cadence's, or wider where ``max_share`` asks for it."""
        c = self.cadence
        first, interval = c.first_step, c.min_interval
        if c.max_share is not None:
            floor = share_interval(self.bound().num_val_examples(), batch_size, c.max_share)
            first = min(max(first, floor), self.max_steps(batch_size))
            interval = max(interval, floor)
        return first, interval

    def eval_steps(self, batch_size: int) -> tuple[int, ...]:
        """The evaluation steps every trial at this batch size uses."""
        first, interval = self.eval_spacing(batch_size)
        return eval_steps(self.max_steps(batch_size), first, self.cadence.relative, interval)

    def identity(self) -> dict[str, Any]:
        """Everything that makes two runs' trials comparable (the study fingerprint's input).

        Not included: the trial count, the batch-size list and the description, which may
        change between runs of the same studies; the seed is part of the study name instead.
        """
        return {
            "workload": self.workload_name,
            "workload_options": (self.workload.options_dict() if self.workload is not None
                                 else dict(self.workload_options)),
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "fixed": self.fixed,
            "search_space": {p.name: p.to_attr() for p in self.space},
            "target": dataclasses.asdict(self.target),
            **({"also": [str(g) for g in self.also]} if self.also else {}),
            "budget": _budget_identity(self.budget),
            "eval_cadence": _cadence_identity(self.cadence),
            "sampler": dataclasses.asdict(self.sampler),
            "pruner": dataclasses.asdict(self.pruner),
            "precision": self.precision,
        }

    def fingerprint(self) -> str:
        """A short hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Typed access to TOML tables


class _Table:
    """A TOML table with its dotted location, for typed reads and unknown-key checks."""

    def __init__(self, path: str, where: str, data: Any) -> None:
        self.path, self.where = path, where
        if not isinstance(data, dict):
            raise SpecError(path, where, f"must be a table, got {_tname(data)}")
        self.data = data

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def error(self, k: str, message: str) -> SpecError:
        return SpecError(self.path, self.key(k), message)

    def only(self, allowed: typing.Iterable[str]) -> None:
        allowed = list(allowed)
        for k in self.data:
            if k not in allowed:
                raise self.error(k, f"unknown key; allowed: {', '.join(allowed)}")

    def get(self, k: str, kind: str, default: Any = ..., choices: tuple[str, ...] = ()) -> Any:
        if k not in self.data:
            if default is ...:
                raise self.error(k, f"required ({kind})")
            return default
        v = self.data[k]
        if not _is(v, kind):
            raise self.error(k, f"must be {kind}, got {_tname(v)} {v!r}")
        if kind == "number":
            v = float(v)
            if not math.isfinite(v):
                raise self.error(k, f"must be a finite number, got {v!r}")
        if choices and v not in choices:
            raise self.error(k, f"{v!r} is not allowed; allowed: {', '.join(choices)}")
        return v

    def positive_int(self, k: str, default: Any = ...) -> int:
        v = self.get(k, "integer", default)
        if v is not None and v <= 0:
            raise self.error(k, f"must be a positive integer, got {v}")
        return v

    def seed(self, k: str, default: Any = ...) -> int:
        v = self.get(k, "integer", default)
        if not 0 <= v <= SEED_MAX:
            raise self.error(k, f"{v}; allowed: an integer in [0, 2^32 - 1] = [0, {SEED_MAX}]")
        return v

    def table(self, k: str) -> _Table:
        return _Table(self.path, self.key(k), self.data.get(k, {}))


def _is(v: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "string":
        return isinstance(v, str)
    if kind == "boolean":
        return isinstance(v, bool)
    if kind == "list of integers":
        return isinstance(v, list) and all(_is(x, "integer") for x in v)
    if kind == "list of numbers":
        return isinstance(v, list) and all(_is(x, "number") for x in v)
    if kind == "list of strings":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if kind == "list":
        return isinstance(v, list)
    if kind == "table":
        return isinstance(v, dict)
    raise AssertionError(kind)


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "table"}.get(type(v), type(v).__name__)


def _type_name(tp: Any) -> str:
    """``int`` -> "int", ``list[int]`` -> "list[int]"."""
    return tp.__name__ if isinstance(tp, type) and not isinstance(tp, types.GenericAlias) \
        else str(tp).replace("typing.", "")


#: Workload option types (dataclass field annotations) -> the spec kind that expresses them.
_KINDS: dict[Any, str] = {int: "integer", float: "number", str: "string", bool: "boolean",
                          list[int]: "list of integers", list[float]: "list of numbers",
                          list[str]: "list of strings", dict[str, Any]: "table"}


# ---------------------------------------------------------------------------------------------
# Sections


def _raw_options(t: _Table) -> dict[str, Any]:
    """The ``[workload]`` options as the file gives them (checked by the workload when bound)."""
    return {k: v for k, v in t.data.items() if k != "name"}


def _workload(t: _Table, resolve: Resolver | None) -> tuple[str, Any, dict[str, Any]]:
    # ``module = "pkg.mod:LitModel"`` without a name: the user's LightningModule
    name = t.get("name", "string", LIGHTNING if "module" in t.data else ...)
    if resolve is None:
        return name, None, _raw_options(t)
    try:
        cls = resolve(name)
    except KeyError as exc:
        raise t.error("name", exc.args[0]) from None
    opts = cls.Options
    if not dataclasses.is_dataclass(opts):
        raise t.error("name", f"workload {name!r}: its Options ({opts!r}) is not a dataclass; "
                      "allowed: a @dataclass whose fields are the [workload] options")
    try:
        hints = typing.get_type_hints(opts)
    except Exception as exc:  # noqa: BLE001 - a plug-in's annotation may fail to resolve
        raise t.error("name", f"workload {name!r}: cannot resolve the types of its Options: "
                      f"{type(exc).__name__}: {exc}") from None
    fields = dataclasses.fields(opts)
    for f in fields:
        if hints.get(f.name) not in _KINDS:
            raise t.error(f.name, f"workload {name!r}: Options field {f.name} has type "
                          f"{_type_name(hints.get(f.name))}, which a spec cannot express; allowed "
                          f"field types: {', '.join(map(_type_name, _KINDS))}")
    t.only(["name", *(f.name for f in fields)])
    values = {}
    for f in fields:
        required = (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if f.name in t.data or required:
            v = t.get(f.name, _KINDS[hints[f.name]])
            values[f.name] = float(v) if hints[f.name] is float else v
    try:
        workload = cls(opts(**values))
        problems = workload.check_options()
    except Exception as exc:  # noqa: BLE001 - plug-in code
        raise t.error("name", f"workload {name!r} failed to start: {type(exc).__name__}: "
                      f"{' '.join(str(exc).split())}") from None
    for k, message in problems:
        raise t.error(k, message)
    return name, workload, values


def _check_bounds(t: _Table, k: str, v: float) -> None:
    lo, hi, lo_in, hi_in = PARAM_BOUNDS.get(k, (-math.inf, math.inf, True, True))
    if v < lo or v > hi or (v == lo and not lo_in) or (v == hi and not hi_in):
        allowed = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
        raise t.error(k, f"{v!r} is outside {allowed}")


def _space(t: _Table, allowed: dict[str, Any], args: bool = False,
           free: set[str] | frozenset[str] = frozenset()) -> tuple[Param, ...]:
    """``[search_space]``: the optimizer's metaparameters, and with ``args`` (a LightningModule
    spec) ``"module.NAME"`` / ``"datamodule.NAME"`` constructor arguments too. Names in ``free``
    (a generic optimizer's own arguments) may take choices of any scalar."""
    for k in t.data:
        if k.startswith(ARG_PREFIXES) and not args:
            raise t.error(k, "searched constructor arguments are for [workload] module = "
                          "'pkg.mod:LitModel' specs; allowed: "
                          f"{', '.join(allowed) or 'none'}")
        if k not in allowed and not (args and k.startswith(ARG_PREFIXES)
                                     and len(k.split(".", 1)[1]) > 0):
            more = ", 'module.NAME', 'datamodule.NAME'" if args else ""
            raise t.error(k, f"unknown key; allowed: {', '.join(allowed)}{more}")
    params = []
    for name in t.data:
        p = t.table(name)
        arg = name.startswith(ARG_PREFIXES) or name in free
        if "choices" in p.data:
            p.only(["choices"])
            choices = p.get("choices", "list")
            if not choices:
                raise p.error("choices", "must be a non-empty list")
            if len(set(map(repr, choices))) != len(choices):
                raise p.error("choices", f"has duplicates: {choices}")
            for c in choices:
                if arg and isinstance(c, (str, bool, int, float)):
                    continue  # a constructor argument: any value TOML and Optuna can store
                if not _is(c, "number"):
                    raise p.error("choices", f"{c!r}: choices of {name} must be numbers")
                _check_bounds(t, name, float(c))
            params.append(Param(name, choices=tuple(choices)))
            continue
        p.only(["low", "high", "log", "int"])
        integer = p.get("int", "boolean", name in INTEGER_PARAMS)
        low = p.get("low", "integer" if integer else "number")
        high = p.get("high", "integer" if integer else "number")
        log = p.get("log", "boolean", False)
        if low >= high:
            raise p.error("high", f"range [{low}, {high}] is empty or inverted; need low < high")
        if log and low <= 0:
            raise p.error("low", f"{low} with log = true; a log range needs low > 0")
        _check_bounds(t, name, float(low))
        _check_bounds(t, name, float(high))
        params.append(Param(name, low=low, high=high, log=log, integer=integer))
    return tuple(params)


def _optimizer_name(t: _Table, lightning: bool) -> str:
    names = OPTIMIZERS if lightning else OPTIMIZERS[:-1]
    name = t.get("name", "string")
    if name not in names and generic(name) is None:
        raise t.error("name", f"{name!r} is not allowed; allowed: {', '.join(names)}, or any "
                      f"class as {' / '.join(p + '.NAME' for p in GENERIC_PACKAGES)}")
    return name


def _optimizer(t: _Table, space_t: _Table, lightning: bool = False
               ) -> tuple[str, str, dict[str, Any], tuple[Param, ...]]:
    name = _optimizer_name(t, lightning)
    schedule = t.get("schedule", "string", "constant", choices=SCHEDULES)
    if name == MODULE_OPTIMIZER and schedule != "constant":
        raise t.error("schedule", f"{schedule!r} with name = 'module': the module's "
                      "configure_optimizers owns its schedulers; allowed: constant")
    allowed = allowed_params(name, schedule)
    own: set[str] = set()  # a generic optimizer's constructor arguments (checked by tuner run)
    if generic(name) is not None:
        for table in (t, space_t):
            for k in table.data:
                if k in ("name", "schedule") or k in allowed or k.startswith(ARG_PREFIXES):
                    continue
                if not is_identifier(k):
                    raise table.error(k, f"is not a constructor argument name of {name}")
                if k in SCHEDULE_KEYS:  # it would never reach the constructor
                    takes = [n for n, ps in SCHEDULE_PARAMS.items() if k in ps]
                    raise table.error(k, f"belongs to schedule {' / '.join(takes)}, not "
                                      f"{schedule!r}; allowed: {', '.join(allowed)} and "
                                      f"{name}'s own arguments")
                own.add(k)
        allowed = {**allowed, **dict.fromkeys(sorted(own))}
    t.only(["name", "schedule", *allowed])
    space = _space(space_t, allowed, args=lightning, free=own)
    searched = {p.name for p in space}
    fixed: dict[str, Any] = {}
    for k, default in allowed.items():
        if k in t.data:
            if k in searched:
                raise t.error(k, f"is also in [search_space]; {k} is either searched or fixed")
            if k in own and isinstance(t.data[k], (bool, str)):
                fixed[k] = t.data[k]  # e.g. nesterov = true, data_format = "channels_last"
                continue
            v = t.get(k, "integer" if k in INTEGER_PARAMS else "number")
            _check_bounds(t, k, v)
            fixed[k] = int(v) if k in INTEGER_PARAMS else v
        elif k not in searched:
            if default is None and k not in OPTIONAL_PARAMS:
                raise t.error(k, f"required by optimizer {name!r} with schedule {schedule!r}: "
                              f"search it in [search_space] or fix it in [optimizer]")
            if default is not None:
                fixed[k] = default
    if "decay_steps" in searched or "decay_steps" in fixed:
        if "decay_fraction" in searched or "decay_fraction" in t.data:
            raise t.error("decay_steps", "give decay_steps or decay_fraction, not both")
        fixed.pop("decay_fraction", None)
    return name, schedule, fixed, space


def _also(t: _Table, target: Target, workload: Any) -> tuple[Goal, ...]:
    """``[target] also``: more goals every trial trains until it meets (each exact later)."""
    texts = t.get("also", "list", [])
    goals: list[Goal] = []
    for text in texts:
        if not isinstance(text, str):
            raise t.error("also", f"{text!r}; allowed: strings such as 'error<=0.05'")
        try:
            g = Goal.parse(text)
        except ValueError as exc:
            raise t.error("also", str(exc)) from None
        if (workload is not None and not workload.metrics_from_preflight
                and g.metric not in workload.metrics):
            raise t.error("also", f"{g}: {g.metric!r} is not produced by workload "
                          f"{workload.name!r}; allowed: {', '.join(workload.metrics)}")
        if g in goals or (target.direction and g == Goal.of_target(dataclasses.asdict(target))):
            raise t.error("also", f"{g} is listed twice (or is the target itself)")
        goals.append(g)
    return tuple(goals)


def _target(t: _Table, workload: Any) -> Target:
    t.only(["metric", "value", "direction", "also"])
    if workload is None:  # read without the workload: its metrics and ranges are unknown
        return Target(t.get("metric", "string"), t.get("value", "number"),
                      t.get("direction", "string", "", choices=DIRECTIONS))
    if workload.metrics_from_preflight:  # a LightningModule: what validation_step logs
        direction = t.get("direction", "string", None, choices=DIRECTIONS)
        if direction is None:
            raise t.error("direction", "required for a LightningModule's metric (the tool "
                          "cannot know whether it improves up or down); allowed: "
                          f"{', '.join(DIRECTIONS)}")
        return Target(t.get("metric", "string"), t.get("value", "number"), direction)
    metrics = workload.metrics
    metric = t.get("metric", "string")
    if metric not in metrics:
        raise t.error("metric", f"{metric!r} is not produced by workload "
                      f"{workload.name!r}; allowed: {', '.join(metrics)}")
    value = t.get("value", "number")
    direction = t.get("direction", "string", metrics[metric], choices=DIRECTIONS)
    lo, hi = workload.metric_ranges.get(metric, (-math.inf, math.inf))
    if not lo <= value <= hi:
        raise t.error("value", f"{value} is outside the range of {metric} ([{lo:g}, {hi:g}]); "
                      f"allowed: a target in [{lo:g}, {hi:g}]")
    start = workload.initial_metric(metric)
    if start is not None and direction == metrics[metric] and Target(metric, value,
                                                                      direction).reached(start):
        better = "below" if direction == "minimize" else "above"
        raise t.error("value", f"{value} is already met at initialisation ({metric} is about "
                      f"{start:.4g} before the first step, so every trial would reach it at its "
                      f"first evaluation); allowed: a target {better} {start:.4g}")
    return Target(metric, value, direction)


def _budget(t: _Table) -> Budget:
    t.only(["max_steps", "max_epochs", "reference_batch_size", "scaling_power", "min_steps",
            "divergence_factor", "train_to_budget"])
    if ("max_steps" in t.data) == ("max_epochs" in t.data):
        raise t.error("max_steps", "give exactly one of max_steps or max_epochs")
    max_epochs = t.get("max_epochs", "number", None)
    if max_epochs is not None and max_epochs <= 0:
        raise t.error("max_epochs", f"must be > 0, got {max_epochs}")
    ref = t.positive_int("reference_batch_size", None)
    if ref is not None and max_epochs is not None:
        raise t.error("reference_batch_size", "scales max_steps; it does not apply to max_epochs")
    if "scaling_power" in t.data and ref is None:
        raise t.error("scaling_power", "needs reference_batch_size")
    factor = t.get("divergence_factor", "number", 100.0)
    if factor <= 1:
        raise t.error("divergence_factor", f"must be > 1, got {factor}")
    return Budget(
        max_steps=t.positive_int("max_steps", None),
        max_epochs=max_epochs,
        reference_batch_size=ref,
        scaling_power=t.get("scaling_power", "number", 1.0),
        min_steps=t.positive_int("min_steps", 1),
        divergence_factor=factor,
        train_to_budget=t.get("train_to_budget", "boolean", False),
    )


def _budget_identity(budget: Budget) -> dict[str, Any]:
    """The budget's part of a spec's identity; ``train_to_budget`` only when set, so that
    studies stored before it existed keep their fingerprint."""
    out = dataclasses.asdict(budget)
    if not out["train_to_budget"]:
        del out["train_to_budget"]
    return out


def _cadence_identity(cadence: Cadence) -> dict[str, Any]:
    """The cadence's part of a spec's identity; ``max_share`` only when set, so that studies
    stored before it existed keep their fingerprint."""
    out = dataclasses.asdict(cadence)
    if out["max_share"] is None:
        del out["max_share"]
    return out


def _cadence(t: _Table, workload: Any) -> Cadence:
    t.only(["first_step", "relative", "min_interval", "max_share"])
    relative = t.get("relative", "number", 0.02)
    if not 0 <= relative <= 1000:
        raise t.error("relative", f"{relative}; allowed: a number in [0, 1000] (0.02: each "
                      "evaluation at least 2 % after the last)")
    max_share = t.get("max_share", "number", None)
    if max_share is not None:
        if not 0.001 <= max_share < 1:
            raise t.error("max_share", f"{max_share}; allowed: a fraction in [0.001, 1), "
                          "e.g. 0.05")
        if workload is not None and workload.num_val_examples() == 0:
            raise t.error("max_share", "this workload has no validation pass to space out; "
                          "allowed: only for trained workloads")
    return Cadence(t.positive_int("first_step", 10), relative, t.positive_int("min_interval", 10),
                   max_share)


def _sampler(t: _Table, seed: int) -> SamplerSpec:
    name = t.get("name", "string", "qmc", choices=SAMPLERS)
    options_by_name = {
        "qmc": {"qmc_type": "string", "scramble": "boolean"},
        "tpe": {"n_startup_trials": "integer", "multivariate": "boolean"},
        "random": {},
    }
    kinds = options_by_name[name]
    t.only(["name", "seed", *kinds])
    options = {k: t.get(k, kind) for k, kind in kinds.items() if k in t.data}
    if options.get("qmc_type", "halton") not in ("halton", "sobol"):
        raise t.error("qmc_type", f"{options['qmc_type']!r}; allowed: halton, sobol")
    if options.get("n_startup_trials", 0) < 0:
        raise t.error("n_startup_trials", f"{options['n_startup_trials']}; allowed: an integer "
                      ">= 0")
    return SamplerSpec(name, t.seed("seed", seed), options)


def _union_args(hint: Any) -> tuple[Any, ...]:
    """``int | str`` -> ``(int, str)``; ``int`` -> ``(int,)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _option_kinds(hint: Any) -> tuple[type, ...]:
    """The TOML value types an Optuna constructor argument annotated ``hint`` takes."""
    args = _union_args(hint)
    out: list[type] = []
    for a in args:
        out += [int, float] if a is float else [a]
    return tuple(out)


def _optuna_options(options: _Table, cls: type) -> dict[str, Any]:
    """``[pruner] options`` checked against the signature of Optuna's ``cls``: names, required
    arguments, and each value's type; string values only where Optuna's default is that string
    (e.g. ``"auto"``)."""
    sig = inspect.signature(cls)
    hints = typing.get_type_hints(cls.__init__)
    accepted = [p for p in sig.parameters if p != "self"]
    options.only(accepted)
    for k in accepted:
        param = sig.parameters[k]
        hint = hints.get(k, Any)
        kinds = _option_kinds(hint)
        names = " or ".join(
            {int: "integer", float: "number", str: f"{param.default!r}", bool: "boolean"}
            .get(x, getattr(x, "__name__", str(x))) for x in _union_args(hint))
        if k not in options.data:
            if param.default is inspect.Parameter.empty:
                raise options.error(k, f"required by Optuna's {cls.__name__} ({names})")
            continue
        v = options.data[k]
        ok = any(isinstance(v, x) and not (isinstance(v, bool) and x is not bool)
                 for x in kinds if x is not Any) or Any in kinds
        if isinstance(v, str) and ok and v != param.default:
            ok = False
        if not ok:
            raise options.error(k, f"must be {names}, got {_tname(v)} {v!r}")
    return dict(options.data)


def _pruner(t: _Table, target: Target, also: tuple[Goal, ...] = (),
            train_to_budget: bool = False) -> PrunerSpec:
    name = t.get("name", "string", "none" if train_to_budget else "lossless", choices=PRUNERS)
    if train_to_budget and name != "none":
        raise t.error("name", f"{name!r} with [budget] train_to_budget = true: every trial "
                      "trains its whole budget; allowed: 'none' (the default then)")
    t.only(["name", "slack", "lossless", "options"])
    slack = t.get("slack", "number", 1.0)
    if slack < 1.0:
        raise t.error("slack", f"{slack} < 1 could prune the best trial; allowed: >= 1")
    lossless = t.get("lossless", "boolean", name != "none")
    options = t.table("options")
    values: dict[str, Any] = {}
    if name in OPTUNA_PRUNERS:
        if also:
            raise t.error("name", f"{name!r} with [target] also: Optuna's pruners see the "
                          "target metric only and could stop a trial before an extra goal; "
                          "allowed: 'lossless' (lossless for every goal) or 'none'")
        cls = getattr(optuna.pruners, OPTUNA_PRUNERS[name])
        values = _optuna_options(options, cls)
        if target.direction not in ("minimize", ""):
            raise t.error("name", f"Optuna's {name} pruner compares intermediate values as "
                          "a minimised objective; use a minimised target metric (e.g. error) "
                          "or pruner 'lossless'")
    else:
        options.only([])
    if name == "none" and lossless:
        raise t.error("lossless", "pruner 'none' with lossless = true; use name = 'lossless'")
    return PrunerSpec(name, slack, lossless, values)


# ---------------------------------------------------------------------------------------------


def load(path: str | Path, resolve: Resolver | None = None) -> Spec:
    """Read and validate a spec file (with its workload when ``resolve`` is given).

    Raises:
        SpecError: the first problem found, naming file, key and what is allowed.
    """
    p = str(path)
    specs = load_series(path, resolve)
    if len(specs) > 1:
        raise SpecError(p, "series", f"the file declares a series of {len(specs)} specs "
                        f"({', '.join(x.name for x in specs)}); load it with load_series")
    return specs[0]


def _read(path: str | Path) -> tuple[dict[str, Any], str]:
    """The TOML document and text of a spec file.

    Raises:
        SpecError: the file cannot be read or is not UTF-8 TOML.
    """
    p = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(p, "", f"cannot read: {exc.strerror}; allowed: a TOML file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(p, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                        f"{exc.start}); allowed: a TOML file in UTF-8") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(p, "", f"not valid TOML: {exc}") from None


def load_series(path: str | Path, resolve: Resolver | None = None) -> list[Spec]:
    """Every spec a file stands for: one for a plain spec, one per value for a ``[series]``
    (:mod:`tuner.spec.series`), in the order the values are listed.

    Raises:
        SpecError: the first problem found; for a series member, the key names its value
            (``series[train_size=2000].budget``).
    """
    data, text = _read(path)
    p = str(path)
    if "series" not in data:
        return [parse(data, p, text, resolve)]
    name = _name(_Table(p, "", data), p)
    out = []
    for member, doc, series in series_mod.members(data, p, name):
        try:
            spec = parse({**doc, "name": member}, p, text, resolve)
        except SpecError as exc:
            raise SpecError(p, f"series[{series.key.split('.')[1]}={series.value}]"
                            f"{'.' + exc.key if exc.key else ''}", exc.message) from None
        out.append(dataclasses.replace(spec, series=series))
    return out


def _name(top: _Table, path: str) -> str:
    """The spec's ``name`` (default: the file's stem), checked."""
    name = top.get("name", "string", Path(path).stem)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise top.error("name", f"{name!r}; allowed: letters, digits, '_', '.', '-'")
    if len(name) > MAX_NAME:
        raise top.error("name", f"{len(name)} characters; allowed: at most {MAX_NAME} (study names "
                        "are stored in a 512-character column)")
    return name


def parse(data: dict[str, Any], path: str, text: str = "", resolve: Resolver | None = None
          ) -> Spec:
    """Validate an already-parsed TOML document (``path`` is used in messages); with
    ``resolve``, against its workload too."""
    top = _Table(path, "", data)
    top.only(TOP_KEYS)
    if "series" in data:
        raise top.error("series", "a series stands for several specs; allowed: "
                        "tuner.spec.load_series")
    name = _name(top, path)
    seed = top.seed("seed", 0)
    batch_sizes = top.get("batch_sizes", "list of integers")
    if not batch_sizes:
        raise top.error("batch_sizes", "must list at least one batch size")
    for b in batch_sizes:
        if b <= 0:
            raise top.error("batch_sizes", f"{b}: batch sizes must be positive integers")
    if len(set(batch_sizes)) != len(batch_sizes):
        raise top.error("batch_sizes", f"has duplicates: {batch_sizes}")
    trials = top.positive_int("trials", 16)

    wname, workload, options = _workload(top.table("workload"), resolve)
    optimizer, schedule, fixed, space = _optimizer(top.table("optimizer"),
                                                   top.table("search_space"), wname == LIGHTNING)
    for key, message in (workload.check_metaparameters(optimizer, schedule, fixed,
                                                       {p.name for p in space})
                         if workload is not None else ()):
        raise SpecError(path, key, message)
    target = _target(top.table("target"), workload)
    also = _also(top.table("target"), target, workload)
    budget = _budget(top.table("budget"))
    if (workload is not None and budget.max_epochs is not None
            and workload.num_train_examples() == 0):
        raise SpecError(path, "budget.max_epochs", f"workload {wname!r} has no data set; "
                        "allowed: max_steps")
    cadence = _cadence(top.table("eval"), workload)
    trainer = top.table("trainer")
    trainer.only(["accelerator", "precision", "devices", "trials_at_once"])

    spec = Spec(
        path=path, text=text, name=name, description=top.get("description", "string", ""),
        seed=seed, batch_sizes=tuple(sorted(batch_sizes)), trials=trials,
        workload_name=wname, workload_options=options, workload=workload,
        optimizer=optimizer, schedule=schedule,
        fixed=fixed, space=space, target=target, budget=budget, cadence=cadence,
        sampler=_sampler(top.table("sampler"), seed),
        pruner=_pruner(top.table("pruner"), target, also, budget.train_to_budget),
        also=also,
        accelerator=trainer.get("accelerator", "string", "auto", choices=ACCELERATORS),
        precision=trainer.get("precision", "string", "32-true", choices=PRECISIONS),
        devices=trainer.positive_int("devices", 1),
        trials_at_once=trainer.positive_int("trials_at_once", 1),
    )
    if workload is None:
        return spec
    if budget.train_to_budget and wname != LIGHTNING and not callable(
            getattr(workload, "build_model", None)):
        raise SpecError(path, "budget.train_to_budget", f"workload {wname!r} is not trained "
                        "(its curve is computed, not measured); allowed: false")
    if spec.devices > 1:
        if wname != LIGHTNING and not callable(getattr(workload, "build_model", None)):
            # neither a TrainedWorkload nor a LightningModule: nothing to train
            raise SpecError(path, "trainer.devices", f"workload {wname!r} is not trained; "
                            "allowed: 1")
        if odd := [b for b in spec.batch_sizes if b % spec.devices]:
            raise SpecError(path, "batch_sizes", f"{odd[0]} does not split over trainer.devices "
                            f"= {spec.devices}; allowed: multiples of {spec.devices} (a step is "
                            "one global batch, split evenly across devices)")
    if spec.trials_at_once > 1 and (refusal := workload.stacked_refusal(
            spec.optimizer, spec.precision, spec.devices)):
        raise SpecError(path, *refusal)
    for b in spec.batch_sizes:
        try:
            steps = spec.max_steps(b)
        except (OverflowError, ValueError):
            steps = math.inf
        if not steps <= MAX_STEPS:
            raise SpecError(path, "budget", f"{budget.rule()} gives "
                            f"{'an overflow' if steps == math.inf else f'{steps:.4g} steps'} at batch "
                            f"size {b}; allowed: at most {MAX_STEPS} = 2^31 - 1 steps (Optuna "
                            "stores steps as 32-bit integers)")
        if steps < cadence.first_step:
            raise SpecError(path, "budget", f"{steps} steps at batch size {b} ends before the "
                            f"first evaluation (eval.first_step = {cadence.first_step}); allowed: "
                            f"a budget of at least {cadence.first_step} steps at every batch size")
    return spec


def with_seed(spec: Spec, seed: int) -> Spec:
    """The same spec with another seed (the sampler's too, unless the spec fixed it apart)."""
    sampler = spec.sampler
    if sampler.seed == spec.seed:
        sampler = dataclasses.replace(sampler, seed=seed)
    return dataclasses.replace(spec, seed=seed, sampler=sampler)
