"""Time to target: steps at different batch sizes cost different time (Shallue et al. measure
steps; a user pays seconds).

Per batch size, the step time is the median over its finished, not diverged trials of their
steady-state seconds per training step (the ``step_seconds`` attr: after the first
:data:`tuner.core.trial.WARMUP_STEPS` steps, evaluation excluded), on the device kind most of
them ran on. Studies stored before that attr fall back to ``(wall - eval) / steps``, which also
counts the trial's set-up (marked ``"wall"``). Trials trained several at once (``[trainer]
trials_at_once``) time the whole stack's step: they count only where no trial of the batch size
ran alone (marked ``"shared"``: one trial alone steps faster). The time to target is the best
steps times that step time; the time-optimal batch size minimises it. Throughput is B / step time, in examples
per second. A closed-form workload (the NQM) has no step time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from tuner.analysis.records import TrialRecord


@dataclass
class StepTime:
    """The step time of one batch size."""

    seconds: float  # median seconds per training step
    n_trials: int  # trials it is the median of
    #: "steady" (step_seconds), "wall" (set-up included: older studies) or "shared" (only
    #: trials trained several at once, whose step is the whole stack's)
    how: str
    device: str  # the device kind, e.g. "cpu", "cuda"


def device_kind(device: str | None) -> str | None:
    """``cuda:0`` -> ``cuda``; None for unknown or closed-form devices (no steps are timed)."""
    if not device or "closed form" in device or device.startswith("unknown"):
        return None
    return device.split(":")[0]


def step_time(trials: Sequence[TrialRecord]) -> StepTime | None:
    """The median step time of a batch size's trials (see the module doc); None when no trial
    has one."""
    timed: dict[str, list[tuple[float, str]]] = {}
    for t in trials:
        kind = device_kind(t.device)
        if kind is None or not t.finished or t.outcome == "diverged":
            continue
        if t.step_seconds is not None:
            timed.setdefault(kind, []).append((t.step_seconds, "shared" if t.at_once and
                                               t.at_once > 1 else "steady"))
        elif t.wall_seconds and t.stopped_at_step:
            timed.setdefault(kind, []).append(
                ((t.wall_seconds - (t.eval_seconds or 0.0)) / t.stopped_at_step, "wall"))
    if not timed:
        return None
    kind, rows = max(timed.items(), key=lambda kv: (len(kv[1]), kv[0]))
    if alone := [r for r in rows if r[1] != "shared"]:
        rows = alone  # a trial trained alone times one trial's step
    hows = {h for _, h in rows}
    how = "shared" if hows == {"shared"} else "steady" if hows == {"steady"} else "wall"
    return StepTime(statistics.median(s for s, _ in rows), len(rows), how, kind)
