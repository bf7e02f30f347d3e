"""The words of one trial: the target, what a trial is asked, and what it answers.

Plain data shared by every layer (the spec declares the :class:`Target`; the workload gets a
:class:`TrialRequest` and returns a :class:`TrialResult`); see docs/DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tuner.core.goal import Goal


@dataclass(frozen=True)
class Target:
    """Reached at the first evaluation where ``metric`` is at least as good as ``value``."""

    metric: str
    value: float
    direction: str  # "minimize" | "maximize"

    def reached(self, metric_value: float) -> bool:
        """Whether ``metric_value`` is at least as good as the target."""
        if self.direction == "minimize":
            return metric_value <= self.value
        return metric_value >= self.value


@dataclass(frozen=True)
class TrialRequest:
    """Everything one trial needs to know, resolved for one batch size."""

    params: dict[str, Any]  # every metaparameter, searched or fixed
    optimizer: str
    schedule: str
    batch_size: int
    max_steps: int
    eval_steps: tuple[int, ...]  # increasing; the last is max_steps
    target: Target
    seed: int
    divergence_factor: float = 100.0
    accelerator: str = "auto"
    precision: str = "32-true"
    devices: int = 1  # > 1: DDP, the global batch split evenly across the devices
    #: More goals (``[target] also``): train on after the target until each is met (or the
    #: budget ends); the trial's steps-to-target is still the target's.
    also: tuple[Goal, ...] = ()
    #: ``[budget] train_to_budget``: train the whole budget, past the target and every goal
    train_to_budget: bool = False
    #: ``tuner confirm``: at the step the target is reached, evaluate the test split and the
    #: sharpness (:attr:`TrialResult.at_target`)
    measure: bool = False
    #: ... and the loss-landscape slices there (the first seed of the best configuration)
    landscape: bool = False


@dataclass
class TrialResult:
    """What happened in one trial. ``curve`` holds (step, metrics) at every evaluation."""

    reached: bool
    steps_to_target: int | None
    stopped_at_step: int
    diverged: bool
    pruned: bool
    examples_seen: int
    wall_seconds: float
    best_metric: float | None
    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    steps_after: int | None = None  # the target was crossed in (steps_after, steps_to_target]
    eval_seconds: float = 0.0
    device: str = "cpu"
    #: Steady-state seconds per training step: from the end of step :data:`WARMUP_STEPS` to
    #: the end, evaluation excluded (None: the trial stopped by then, or the workload does not
    #: train). What ``tuner curve``'s time to target multiplies.
    step_seconds: float | None = None
    #: With :attr:`TrialRequest.measure`: ``{"step", "test": {metric: value} | None,
    #: "sharpness", "sharpness_examples", "sharpness_iterations"}`` at the step the target was
    #: reached (None: not reached, not asked, or the workload cannot measure it); a
    #: LightningModule's may add ``sharpness_not_measured`` / ``test_not_measured``: why not
    at_target: dict[str, Any] | None = None
    #: The most trials that trained together with this one, itself included (``[trainer]
    #: trials_at_once``: lanes of one vectorised model); 1: alone
    trials_at_once: int = 1


#: Training steps left out of :attr:`TrialResult.step_seconds` (the first steps pay for lazy
#: initialisation, allocator warm-up and, on a GPU, kernel selection).
WARMUP_STEPS = 5


def steady_step_seconds(t_warm: float | None, t_end: float, eval_after_warm: float,
                        steps: int) -> float | None:
    """Seconds per step after the warm-up: ``(t_end - t_warm - eval_after_warm) / (steps -
    WARMUP_STEPS)``; None when the trial did not get past the warm-up."""
    if t_warm is None or steps <= WARMUP_STEPS:
        return None
    return max(0.0, t_end - t_warm - eval_after_warm) / (steps - WARMUP_STEPS)


#: ``report(step, metrics)`` is called at every evaluation; it returns True to stop (prune).
Reporter = Callable[[int, dict[str, float]], bool]


