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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    import torch


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


#: ``report(step, metrics)`` is called at every evaluation; it returns True to stop (prune).
Reporter = Callable[[int, dict[str, float]], bool]


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

    @abstractmethod
    def num_train_examples(self) -> int:
        """Size of the training split (to turn a budget in epochs into steps)."""

    def num_val_examples(self) -> int:
        """Size of the validation split one evaluation runs over (0: no validation pass)."""
        return 0

    @abstractmethod
    def run(self, request: TrialRequest, report: Reporter) -> TrialResult:
        """Train (or compute) until the target is reached, the budget is spent, the loss
        diverges, or ``report`` says stop."""


@dataclass
class Data:
    """Training and validation tensors. Inputs are float, labels int64 class indices."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


class TrainedWorkload(Workload):
    """A workload trained by :func:`tuner.loop.train`: subclasses give data and a model.

    Defaults suit classification: the loss is cross-entropy of ``model(x)`` (or the model's own
    ``training_step`` when it is a LightningModule), and the metrics are ``error``, ``accuracy``
    and ``loss`` on the validation split. Override :meth:`training_loss` / :meth:`evaluate` and
    ``metrics`` for other tasks.
    """

    metrics: ClassVar[dict[str, str]] = {
        "error": "minimize",
        "accuracy": "maximize",
        "loss": "minimize",
    }
    metric_ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "error": (0.0, 1.0),
        "accuracy": (0.0, 1.0),
        "loss": (0.0, float("inf")),
    }
    #: Classes of a classification task, when known without loading the data: an untrained
    #: classifier's error is then about 1 - 1/num_classes (chance), its accuracy 1/num_classes.
    num_classes: ClassVar[int | None] = None
    #: Validation examples per forward pass during evaluation on an accelerator (large), and on
    #: the CPU, where a batch small enough for its activations to stay in cache is faster (the
    #: simple CNN evaluated 10,000 images in 2.7 s at 128, 4.3 s at 4096 on this 2-core CPU).
    eval_batch_size: ClassVar[int] = 4096
    eval_batch_size_cpu: ClassVar[int] = 128

    _data: Data | None = None
    _on_device: tuple[str, Data] | None = None

    @abstractmethod
    def load_data(self) -> Data:
        """Load the training and validation split (CPU tensors). Called once per process."""

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model (the caller has seeded the RNGs)."""

    def initial_metric(self, metric: str) -> float | None:
        """Chance error / accuracy of an untrained classifier (when ``num_classes`` is set)."""
        c = self.num_classes
        if not c or self.metrics is not TrainedWorkload.metrics:
            return None
        return {"error": 1.0 - 1.0 / c, "accuracy": 1.0 / c}.get(metric)

    def memory_bytes(self, batch_size: int, optimizer: str, precision: str) -> int | None:
        """Parameters, gradients and optimizer state, plus a batch of inputs and indices and its
        activations (each saved for backward and its gradient), from the model built on torch's
        meta device (nothing allocated) and one forward pass there; the data is loaded (and
        kept for the trials). None when the model cannot be built or run on the meta device."""
        import torch

        x = self.data().train_x
        try:
            with torch.device("meta"):
                model = self.build_model()
            params = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 - plug-in models may not build on the meta device
            return None
        outputs = [0]

        def hook(_m: torch.nn.Module, _i: object, out: object) -> None:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            outputs[0] += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))

        handles = [m.register_forward_hook(hook) for m in model.modules()
                   if not list(m.children())]
        try:
            with torch.no_grad():
                model(torch.empty((1, *x.shape[1:]), dtype=x.dtype, device="meta"))
        except Exception:  # noqa: BLE001 - a forward that needs real data: parameters only
            outputs[0] = 0
        finally:
            for h in handles:
                h.remove()
        width = 8 if precision.startswith("64") else 4
        states = {"sgd": 0, "adam": 2}.get(optimizer, 1)  # momentum buffers: 1
        per_example = x[:1].numel() * x.element_size() + 8 + 2 * outputs[0] * width
        return params * width * (2 + states) + batch_size * per_example

    def num_val_examples(self) -> int:
        """Validation examples: counted in the loaded data (override it where the count is
        known without loading)."""
        return len(self.data().val_y)

    def data(self) -> Data:
        """The data, loaded once and kept."""
        if self._data is None:
            self._data = self.load_data()
        return self._data

    def data_on(self, device: torch.device) -> Data:
        """The data as tensors on ``device``, moved there once and kept (the last device only)."""
        key = str(device)
        if self._on_device is None or self._on_device[0] != key:
            d = self.data()
            self._on_device = (key, Data(*(t.to(device) for t in (
                d.train_x, d.train_y, d.val_x, d.val_y))))
        return self._on_device[1]

    def training_loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      step: int) -> torch.Tensor:
        """The scalar loss to minimise on one batch."""
        import torch.nn.functional as F
        from lightning import LightningModule
        from lightning.fabric.wrappers import is_wrapped

        # (no getattr(model, "module", None): on a plain module it raises and catches an
        # AttributeError, a few microseconds of every step)
        if isinstance(model, LightningModule) or (
            is_wrapped(model) and isinstance(model.module, LightningModule)
        ):
            out = model.training_step((x, y), step)
            return out if not isinstance(out, dict) else out["loss"]
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> dict[str, float]:
        """Validation metrics of ``model`` (called in eval mode, under ``torch.no_grad``)."""
        import torch
        import torch.nn.functional as F

        loss_sum = torch.zeros((), device=x.device)
        wrong = torch.zeros((), device=x.device, dtype=torch.long)
        bs = self.eval_batch_size_cpu if x.device.type == "cpu" else self.eval_batch_size
        for i in range(0, len(x), bs):
            logits = model(x[i:i + bs]).float()
            yy = y[i:i + bs]
            loss_sum += F.cross_entropy(logits, yy, reduction="sum")
            wrong += (logits.argmax(dim=1) != yy).sum()
        n = len(x)
        error = wrong.item() / n
        return {"error": error, "accuracy": 1.0 - error, "loss": loss_sum.item() / n}

    def run(self, request: TrialRequest, report: Reporter) -> TrialResult:
        """Train with the shared Lightning loop."""
        from tuner.loop import train

        return train(self, request, report)
