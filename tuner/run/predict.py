"""``tuner noise-scale``: one run at fixed metaparameters, its gradient noise scale, stored.

The metaparameters are the best stored trial's at that batch size (or given with ``--set``); the
run trains ``steps`` steps with them and the workload measures |G|^2 and tr(Sigma) at evenly
spaced steps (:meth:`tuner.workload.Workload.noise_scale`). The result is appended to the study
attr ``noise_scale`` (a list, newest last) of the spec's study at that batch size when that
study exists, so ``tuner curve`` and the report show B_simple beside the fitted B_crit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.analysis.records import BatchStudy, best
from tuner.core.errors import UsageError
from tuner.core.predict import NoiseScale, measure_steps
from tuner.core.trial import TrialRequest
from tuner.spec import Spec
from tuner.store.source import load_spec
from tuner.store.rows import open_reader
from tuner.store.storage import open_storage
from tuner.store.urls import sqlite_file

#: The study attr the measurements are appended to.
ATTR = "noise_scale"
#: Micro-batches per measured batch on one device, unless given.
DEFAULT_MICRO = 4


@dataclass
class Plan:
    """What a noise-scale run trains: metaparameters, where they came from, and steps."""

    params: dict[str, Any]
    params_from: str
    steps: int
    study: BatchStudy | None  # the spec's study at the batch size (None: not in storage)


def parse_set(spec: Spec, items: tuple[str, ...]) -> dict[str, Any]:
    """``NAME=VALUE`` items as metaparameters: a searched or fixed one of the spec, its value
    a number (or, for a categorical one, one of its choices).

    Raises:
        UsageError: a malformed item, an unknown name or a value out of place.
    """
    space = spec.space_by_name()
    allowed = sorted({*space, *spec.fixed})
    out: dict[str, Any] = {}
    for item in items:
        name, eq, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not eq or not name or not text:
            raise UsageError(f"--set {item!r}: expected NAME=VALUE; allowed names: "
                             f"{', '.join(allowed)}")
        if name not in allowed:
            raise UsageError(f"--set {name}: not a metaparameter of {spec.path}; allowed: "
                             f"{', '.join(allowed)}")
        p = space.get(name)
        if p is not None and p.choices is not None:
            match = [c for c in p.choices if str(c) == text]
            if not match:
                raise UsageError(f"--set {name}={text}: allowed: "
                                 f"{', '.join(map(str, p.choices))}")
            out[name] = match[0]
            continue
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"--set {name}={text}: not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"--set {name}={text}: allowed: a finite number")
        out[name] = int(value) if (p is not None and p.integer) or (
            isinstance(spec.fixed.get(name), int) and value.is_integer()) else value
    return out


def stored_study(spec: Spec, url: str, batch_size: int) -> BatchStudy | None:
    """The spec's stored study at ``batch_size`` (None: no storage file, or no such study)."""
    db = sqlite_file(url)
    if db is not None and not db.exists():
        return None
    reader = open_reader(url)
    if not any(s.user_attrs.get("spec_name") == spec.name for s in reader.get_all_studies()):
        return None
    stored = load_spec(reader, spec, curves=False)
    return next((st for st in stored.studies if st.batch_size == batch_size), None)


def plan(spec: Spec, url: str, batch_size: int, steps: int | None, overrides: dict[str, Any],
         option: str = "--batch-size") -> Plan:
    """The metaparameters and steps of a run: the stored best trial's at ``batch_size``
    (its steps-to-target by default), ``overrides`` on top; without a stored best, the
    overrides must give every searched metaparameter (the spec's budget by default).
    ``option``: the command's name for the batch size, for the message.

    Raises:
        UsageError: no stored best and a searched metaparameter not given.
    """
    study = stored_study(spec, url, batch_size)
    b = best(study.trials) if study is not None else None
    if b is not None:
        params = {**spec.fixed, **b.params, **overrides}
        where = f"the best trial (#{b.number}, {b.steps_to_target} steps) of {study.study_name}"
        if overrides:
            where += f", with {', '.join(f'{k}={v}' for k, v in overrides.items())}"
        default_steps = b.steps_to_target or 1
    else:
        missing = [p.name for p in spec.space if p.name not in overrides]
        if missing:
            why = ("no stored study of this spec at that batch size" if study is None else
                   f"no trial of {study.study_name} reached the target")
            raise UsageError(f"{option} {batch_size}: {why}; give every searched "
                             f"metaparameter with --set (missing: {', '.join(missing)})")
        params = {**spec.fixed, **overrides}
        where = "--set"
        default_steps = spec.max_steps(batch_size)
    return Plan(params, where, steps or default_steps, study)


def request(spec: Spec, batch_size: int, p: Plan) -> TrialRequest:
    """The run as a trial request: the whole ``steps``, one evaluation at the end."""
    return TrialRequest(
        params=p.params, optimizer=spec.optimizer, schedule=spec.schedule,
        batch_size=batch_size, max_steps=p.steps, eval_steps=(p.steps,), target=spec.target,
        seed=spec.seed, divergence_factor=math.inf, accelerator=spec.accelerator,
        precision=spec.precision, devices=spec.devices, train_to_budget=True)


def measure(spec: Spec, url: str, batch_size: int, steps: int | None, points: int,
            micro_batches: int | None, ema: float, overrides: dict[str, Any], store: bool = True
            ) -> tuple[NoiseScale, str | None]:
    """Run and measure; ``(result, the study it was stored in or None)``. ``micro_batches``:
    default 4 on one device; under DDP (``[trainer] devices`` > 1) the ranks' shards.

    Raises:
        UsageError: a batch size the micro-batches do not divide, micro-batches other than the
            ranks under DDP, or as :func:`plan`.
    """
    if spec.devices > 1 and micro_batches not in (None, spec.devices):
        raise UsageError(f"--micro-batches {micro_batches}: under DDP the small batch is each "
                         f"rank's shard; allowed: {spec.devices} (trainer.devices), or leave it "
                         "out (tensor workloads; a LightningModule is measured on one device)")
    micro_batches = micro_batches or (spec.devices if spec.devices > 1 else DEFAULT_MICRO)
    if batch_size < 2 or batch_size % micro_batches:
        raise UsageError(f"--micro-batches {micro_batches}: must divide the batch size "
                         f"{batch_size} into micro-batches of at least one example")
    if spec.precision.startswith("16"):
        raise UsageError(f"trainer.precision: {spec.precision!r}: the noise scale is measured "
                         "without a gradient scaler; allowed: 32-true, 64-true, bf16-*")
    p = plan(spec, url, batch_size, steps, overrides)
    workload = spec.bound()
    ns = workload.noise_scale(request(spec, batch_size, p), measure_steps(p.steps, points),
                              micro_batches, ema)
    ns.params, ns.params_from = dict(p.params), p.params_from
    if not store or p.study is None:
        return ns, None
    append(url, p.study.study_name, ATTR, ns.to_json())
    return ns, p.study.study_name


def append(url: str, study_name: str, attr: str, run: dict[str, Any]) -> None:
    """Append ``run`` to the list in the study attr ``attr`` (newest last)."""
    storage = open_storage(url)
    study_id = storage.get_study_id_from_name(study_name)
    runs = storage.get_study_user_attrs(study_id).get(attr, [])
    storage.set_study_user_attr(study_id, attr, [*runs, run])

