"""``tuner local-cbs``: Merrill et al.'s branched local critical batch size, stored.

The reference run's metaparameters are the best stored trial's at B0 (or given with ``--set``),
as for ``tuner noise-scale`` (:func:`tuner.run.predict.plan`); its length, by default, that
trial's steps-to-target. The workload computes the branches
(:meth:`tuner.workload.Workload.branch`); the result is appended to the study attr
``local_cbs`` of the spec's study at B0 when that study exists.
"""

from __future__ import annotations

from typing import Any, Sequence

from tuner.core.branching import LR_RULES, LocalCBS, checkpoint_steps, finish
from tuner.core.errors import UsageError
from tuner.run.predict import append, plan, request
from tuner.spec import Spec

#: The study attr the measurements are appended to.
ATTR = "local_cbs"
#: Default factors k (branches at k B0).
FACTORS = (2, 4, 8, 16, 32, 64)


def default_horizon(steps: int, factors: Sequence[int]) -> int:
    """A tenth of the reference run, rounded up to a multiple of the largest factor (so every
    branch trains a whole number of steps)."""
    k = max(factors)
    return max(k, -(-max(1, steps // 10) // k) * k)


def measure(spec: Spec, url: str, b0: int, steps: int | None, points: int,
            factors: Sequence[int], lr_rule: str, horizon: int | None, tolerance: float,
            overrides: dict[str, Any], store: bool = True) -> tuple[LocalCBS, str | None]:
    """Branch and compare; ``(result, the study it was stored in or None)``.

    Raises:
        UsageError: DDP, a schedule other than constant, a factor below 2, a horizon that a
            factor does not divide, an unknown learning-rate rule, or as
            :func:`tuner.run.predict.plan`.
    """
    if spec.devices > 1:
        raise UsageError("trainer.devices: branches run on one device; allowed: 1")
    if spec.schedule != "constant":
        raise UsageError(f"optimizer.schedule {spec.schedule!r}: a branch at k B0 would need its "
                         "schedule re-timed; allowed: constant")
    if lr_rule not in LR_RULES:
        raise UsageError(f"--lr-rule {lr_rule}: allowed: {', '.join(LR_RULES)}")
    factors = sorted(set(factors))
    if not factors or factors[0] < 2:
        raise UsageError(f"--factors {','.join(map(str, factors))}: allowed: integers >= 2")
    p = plan(spec, url, b0, steps, overrides, option="--reference-batch-size")
    horizon = horizon or default_horizon(p.steps, factors)
    bad = [k for k in factors if horizon % k]
    if bad:
        raise UsageError(f"--horizon {horizon}: every factor must divide it (a branch at k B0 "
                         f"trains horizon / k steps); not: {', '.join(map(str, bad))}")
    at = checkpoint_steps(p.steps, points, horizon)
    workload = spec.bound()
    result = workload.branch(request(spec, b0, p), at, factors, lr_rule, horizon)
    if not result.checkpoints:
        raise UsageError(f"the reference run at B = {b0} ({p.params_from}) diverged before its "
                         "first comparison: nothing to branch from; allowed: metaparameters "
                         "that train stably (--set)")
    result.planned = len(at)
    result.tolerance = tolerance
    result.params, result.params_from = dict(p.params), p.params_from
    finish(result)
    if not store or p.study is None:
        return result, None
    append(url, p.study.study_name, ATTR, result.to_json())
    return result, p.study.study_name
