"""The one question every workload answers, and the base class for trained workloads.

A workload answers: "with these metaparameters at batch size B, when (if ever) is the target
reached, and what did the curve look like?" It gets a :class:`TrialRequest` and a ``report``
callback, and hands back a :class:`TrialResult`. Pruning and reporting to Optuna live in the
objective, behind ``report``, so every kind of workload gets them.

To plug in your own model, subclass :class:`TrainedWorkload` (see ``workloads/README.md``)::

    @dataclass
    class MyOptions:
        width: int = 256

    class MyWorkload(TrainedWorkload):
        name = "my_model"
        Options = MyOptions

        def load_data(self) -> Data:            # CPU tensors; cached per process
            ...
        def build_model(self) -> torch.nn.Module:  # a LightningModule works too
            ...

and name it in a spec as ``[workload] name = "my_package.my_module:MyWorkload"`` or register it
with :func:`workloads.register`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

from tuner.core.errors import UsageError
from tuner.core.branching import LocalCBS
from tuner.core.predict import NoiseScale
from tuner.core.trial import Reporter, Target, TrialRequest, TrialResult

__all__ = ["NoOptions", "Reporter", "Target", "TrialRequest", "TrialResult", "Workload"]


@dataclass
class NoOptions:
    """A workload without options."""


class Workload(ABC):
    """A model + data + metric (or an analytic model) that answers steps-to-target questions."""

    #: Registry name used in specs.
    name: ClassVar[str] = ""
    #: A dataclass of the options a spec's ``[workload]`` table may set.
    Options: ClassVar[type] = NoOptions
    #: Metric name -> the direction in which it improves.
    metrics: ClassVar[dict[str, str]] = {}
    #: Trials so fast that storage writes dominate: run each in memory and store it whole.
    buffered: ClassVar[bool] = False
    #: Metric name -> the closed range its values lie in (a target outside it is refused).
    metric_ranges: ClassVar[dict[str, tuple[float, float]]] = {}
    #: The metrics are known only once a pre-flight trial ran (:meth:`preflight`): a spec's
    #: target metric is then checked there, not while the spec is read.
    metrics_from_preflight: ClassVar[bool] = False

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    def options_dict(self) -> dict[str, Any]:
        """The options as plain data (stored in the study attrs)."""
        return dataclasses.asdict(self.options)

    def check_options(self) -> list[tuple[str, str]]:
        """Problems with the options as (option key, what is allowed); empty when fine.

        Called while the spec is validated, before any storage is touched: keep it cheap.
        """
        return []

    def check_metaparameters(self, optimizer: str, schedule: str, fixed: dict[str, Any],
                             searched: set[str]) -> list[tuple[str, str]]:
        """Problems with the optimizer/schedule/metaparameters for this workload, as
        (spec key, message); empty when fine (trained workloads take them all)."""
        return []

    def initial_metric(self, metric: str) -> float | None:
        """The metric's value before the first step (for an untrained model, its expected value),
        or None when unknown. A target already met there is refused: every trial would reach
        it at its first evaluation. Called while the spec is validated: keep it cheap."""
        return None

    def memory_bytes(self, batch_size: int, optimizer: str, precision: str) -> int | None:
        """About how many bytes one trial at ``batch_size`` needs on its device, or None when
        unknown. ``tuner run`` refuses batch sizes that do not fit (unless ``--allow-large``)."""
        return None

    def preflight(self, request: TrialRequest) -> tuple[list[tuple[str, str]], set[str]]:
        """A tiny trial before any storage is touched: ``(problems, metrics)``, where problems
        are (spec key, message) pairs (empty when fine) and metrics the names one evaluation
        produced. ``request`` is a short trial (a step or two, one evaluation) at a real batch
        size. The default runs nothing and answers :attr:`metrics`."""
        return [], set(self.metrics)

    @abstractmethod
    def num_train_examples(self) -> int:
        """Size of the training split (to turn a budget in epochs into steps)."""

    def num_val_examples(self) -> int:
        """Size of the validation split one evaluation runs over (0: no validation pass)."""
        return 0

    def noise_scale(self, request: TrialRequest, at: Sequence[int], micro_batches: int,
                    ema: float) -> NoiseScale:
        """Train ``request.max_steps`` steps with ``request``'s metaparameters and measure the
        gradient noise scale before the update of each step in ``at`` (``tuner
        noise-scale``): McCandlish's two-batch estimator over ``micro_batches`` micro-batches
        of each batch, or exactly where the workload has a closed form; ``ema``: the moving
        average's decay per measured point.

        Raises:
            UsageError: the workload cannot measure it.
        """
        raise UsageError(f"workload {self.name!r} cannot measure the gradient noise scale; "
                         "allowed: trained workloads (tensors or a LightningModule) and the NQM")

    def branch(self, request: TrialRequest, at: Sequence[int], factors: Sequence[int],
               lr_rule: str, horizon: int) -> LocalCBS:
        """Merrill et al.'s branched measurement (``tuner local-cbs``): a reference run with
        ``request``'s metaparameters at ``request.batch_size``; from each step in ``at``,
        branches at ``factors`` x that batch size with the learning rate scaled by ``lr_rule``
        (:data:`tuner.core.branching.LR_RULES`), each for ``horizon`` / factor steps, and the
        reference for ``horizon`` more steps; the losses at their ends (the result's
        ``tolerance`` and local critical batch sizes are the caller's:
        :func:`tuner.core.branching.finish`).

        Raises:
            UsageError: the workload cannot branch.
        """
        raise UsageError(f"workload {self.name!r} cannot measure the local critical batch "
                         "size; allowed: the NQM, tensor workloads and LightningModules")

    def stacked_refusal(self, optimizer: str, precision: str, devices: int
                        ) -> tuple[str, str] | None:
        """Why this workload cannot train several trials at once as one vectorised model
        (``[trainer] trials_at_once``), as (spec key, message); None when it can. Called
        while the spec is validated."""
        return ("trainer.trials_at_once", f"workload {self.name!r} does not train on the "
                "tensor path; allowed: 1 (trials_at_once vectorises trained tensor workloads)")

    def run_many(self, next_trial: Callable[[], tuple[Any, TrialRequest, Reporter] | None],
                 done: Callable[[Any, TrialResult], None], k: int) -> int:
        """Run trials from ``next_trial`` (``(handle, request, reporter)``, None when there
        are no more), up to ``k`` at once, calling ``done(handle, result)`` as each ends;
        how many ran.

        Raises:
            UsageError: the workload cannot (:meth:`stacked_refusal`; the spec refuses it first).
        """
        raise UsageError(f"workload {self.name!r} cannot train trials at once; allowed: "
                         "trainer.trials_at_once = 1")

    @abstractmethod
    def run(self, request: TrialRequest, report: Reporter) -> TrialResult:
        """Train (or compute) until the target is reached, the budget is spent, the loss
        diverges, or ``report`` says stop."""


