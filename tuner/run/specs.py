"""A spec ready to run: read with its workload, and the sampler and pruner built once.

:func:`tuner.spec.load` reads a spec alone (analysis); :func:`load` here also resolves the
workload (importing it: the user's plug-in, torch) and checks everything that needs it, then
builds the spec's Optuna sampler and pruner once, as the runner will, because Optuna checks some
options only in their constructors.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner import spec as pure
from tuner.core.errors import SpecError, one_line
from tuner.core.trial import TrialRequest
from tuner.run.pruning import build_pruner
from tuner.run.sampling import build_sampler
from tuner.spec import Spec, with_seed
from tuner.spec.optimizers import NAMED, SCHEDULE_KEYS
from tuner.spec.parse import ARG_PREFIXES
from tuner.workload.registry import get as resolve

__all__ = ["Spec", "check_builds", "check_optimizer", "load", "load_series", "parse", "preflight",
           "probe_request", "with_seed"]


def check_builds(spec: Spec) -> Spec:
    """Build the spec's sampler and pruner once.

    Raises:
        SpecError: naming ``[sampler]`` or ``[pruner.options]`` and Optuna's complaint.
    """
    s, p = spec.sampler, spec.pruner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            build_sampler(s.name, s.seed, s.options, {})
        except (ValueError, TypeError) as exc:
            raise SpecError(spec.path, "sampler", f"Optuna's {s.name} sampler refuses these "
                            f"options: {exc}") from None
        try:
            build_pruner(p.name, p.slack, p.lossless, p.options)
        except (ValueError, TypeError) as exc:
            raise SpecError(spec.path, "pruner.options", f"Optuna's {p.name} pruner refuses "
                            f"these options: {exc}") from None
    return spec


def check_optimizer(spec: Spec) -> Spec:
    """Import the spec's optimizer class and check that it takes every metaparameter the spec
    searches or fixes (a ``pytorch_optimizer`` class would silently swallow a misspelt one).

    Raises:
        SpecError: naming the key (``optimizer.NAME`` or ``search_space.NAME``) and the
            arguments the class takes.
    """
    if spec.optimizer in NAMED and NAMED[spec.optimizer].target.startswith("torch.optim."):
        return spec  # our table names torch's own arguments: no import of torch needed (NQM)
    from tuner.train.optim import check  # heavy: imports the optimizer's package

    keys = {k for k in (*spec.fixed, *(p.name for p in spec.space))
            if k not in SCHEDULE_KEYS and not k.startswith(ARG_PREFIXES)}
    problem = check(spec.optimizer, keys)
    if problem is not None:
        key, message = problem
        table = "search_space" if key in {p.name for p in spec.space} else "optimizer"
        raise SpecError(spec.path, f"{table}.{key}", message)
    return spec


def probe_request(spec: Spec, batch_size: int) -> TrialRequest:
    """A pre-flight trial at ``batch_size``: one step and one evaluation, the searched
    metaparameters at the middle of their ranges, on one device (B / devices examples)."""
    return TrialRequest(
        params={**spec.fixed, **{p.name: p.middle() for p in spec.space}},
        optimizer=spec.optimizer, schedule=spec.schedule,
        batch_size=max(1, batch_size // spec.devices), max_steps=1, eval_steps=(1,),
        target=spec.target, seed=spec.seed, divergence_factor=math.inf,
        accelerator=spec.accelerator, precision=spec.precision, devices=1, also=spec.also)


def preflight(spec: Spec, batch_sizes: Sequence[int]) -> set[str]:
    """Run the workload's pre-flight trial at the smallest and the largest batch size, before
    any storage is touched; the metrics it produced.

    Raises:
        SpecError: the first problem, naming the spec key and the cause.
    """
    metrics: set[str] = set()
    workload = spec.bound()
    for b in sorted({min(batch_sizes), max(batch_sizes)}):
        problems, metrics = workload.preflight(probe_request(spec, b))
        for key, message in problems:
            raise SpecError(spec.path, key, f"pre-flight at batch size {b}: {message}")
    if spec.trials_at_once > 1:
        _preflight_at_once(spec, min(batch_sizes))
    return metrics


def _preflight_at_once(spec: Spec, b: int) -> None:
    """Two pre-flight trials trained at once (``[trainer] trials_at_once``): what the
    vectorised model cannot batch (a random op under ``vmap``, logits that are not ``[B,
    classes]``) fails here, in one line, instead of in every worker's first trials.

    Raises:
        SpecError: the probe failed.
    """
    probes = [(i, dataclasses.replace(probe_request(spec, b), seed=spec.seed + i),
               lambda step, metrics: False) for i in range(2)]
    try:
        spec.bound().run_many(lambda: probes.pop() if probes else None, lambda h, r: None, 2)
    except Exception as exc:  # noqa: BLE001 - plug-in code under torch.func
        raise SpecError(spec.path, "trainer.trials_at_once", f"pre-flight of 2 trials at once "
                        f"at batch size {b} failed: {one_line(exc)}; allowed: 1, or a model "
                        "and loss torch.func.vmap can batch (README: Trials at once)") from None


def load(path: str | Path) -> Spec:
    """Read and validate a spec file with its workload (what ``tuner run`` uses).

    Raises:
        SpecError: the first problem found, naming file, key and what is allowed.
    """
    return check_optimizer(check_builds(pure.load(path, resolve)))


def load_series(path: str | Path) -> list[Spec]:
    """:func:`load` for every spec the file stands for (one per value of a ``[series]``).

    Raises:
        SpecError: the first problem found, naming file, key and what is allowed.
    """
    return [check_optimizer(check_builds(s)) for s in pure.load_series(path, resolve)]


def parse(data: dict[str, Any], path: str, text: str = "") -> Spec:
    """:func:`load` for an already-parsed TOML document."""
    return check_optimizer(check_builds(pure.parse(data, path, text, resolve)))
