"""The base class of trained workloads: data + a model, trained by :func:`tuner.train.trial.train`."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from tuner.core.errors import one_line as _one_line
from tuner.core.branching import LocalCBS
from tuner.core.predict import NoiseScale, estimated
from tuner.core.trial import Reporter, TrialRequest, TrialResult
from tuner.spec.optimizers import state_tensors
from tuner.workload.base import Workload

if TYPE_CHECKING:
    import torch


@dataclass
class Data:
    """Training and validation tensors. Inputs are float, labels int64 class indices."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


class TrainedWorkload(Workload):
    """A workload trained by :func:`tuner.train.trial.train`: subclasses give data and a model.

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

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The held-out test split (inputs, labels) prepared as the training data is, or None
        when the workload has none. Only ``tuner confirm`` evaluates it, at the step a
        confirmation trial reached the target; no target or pruning decision ever reads it."""
        return None

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
        import torch  # heavy: torch, only when needed

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
        states = state_tensors(optimizer)
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
        import torch.nn.functional as F  # heavy: torch, only when needed
        from lightning import LightningModule  # heavy: lightning, only when needed
        from lightning.fabric.wrappers import (
            is_wrapped,  # heavy: lightning, only when needed
        )

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
        import torch  # heavy: torch, only when needed
        import torch.nn.functional as F  # heavy: torch, only when needed

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

    def preflight(self, request: TrialRequest) -> tuple[list[tuple[str, str]], set[str]]:
        """Load the data, refuse float labels under the default cross-entropy loss, and run the
        model's loss on one training batch and :meth:`evaluate` on a few validation examples."""
        import torch  # heavy: torch, only when needed

        try:
            data = self.data()
        except Exception as exc:  # noqa: BLE001 - plug-in code
            return [("workload.name", f"loading the data failed: {_one_line(exc)}")], set()
        own_loss = type(self).training_loss is not TrainedWorkload.training_loss
        if data.train_y.is_floating_point() and not own_loss:
            return [("workload.name", f"{self.name!r}: the labels are {data.train_y.dtype} "
                     "(a regression?), but the default loss is cross-entropy on class "
                     "indices; allowed: int64 class labels, or override training_loss and "
                     "evaluate (workloads/README.md), or write a LightningModule")], set()
        torch.manual_seed(request.seed)
        try:
            model = self.build_model()
            loss = self.training_loss(model, data.train_x[:request.batch_size],
                                      data.train_y[:request.batch_size], 0)
            loss.backward()
        except Exception as exc:  # noqa: BLE001 - plug-in code
            return [("workload.name", f"the training step failed: {_one_line(exc)}")], set()
        try:
            model.eval()
            with torch.no_grad():
                metrics = self.evaluate(model, data.val_x[:64], data.val_y[:64])
        except Exception as exc:  # noqa: BLE001 - plug-in code
            return [("workload.name", f"evaluation failed: {_one_line(exc)}")], set()
        return [], set(metrics)

    def noise_scale(self, request: TrialRequest, at: Sequence[int], micro_batches: int,
                    ema: float) -> NoiseScale:
        """The two-batch estimator along a run of the shared loop (:mod:`tuner.train.noise`):
        ``micro_batches`` micro-batches on one device; under DDP the ranks' shards
        (``micro_batches`` = ``request.devices``)."""
        from tuner.train.noise import measure  # heavy: torch and lightning

        raw, steps, bad = measure(self, request, at, micro_batches)
        return estimated(request.batch_size, micro_batches, raw, ema, steps, bad,
                         ddp=request.devices > 1)

    def branch(self, request: TrialRequest, at: Sequence[int], factors: Sequence[int],
               lr_rule: str, horizon: int) -> LocalCBS:
        """The reference run and its branches on the shared loop (:mod:`tuner.train.branching`)."""
        from tuner.train.branching import branch  # heavy: torch and lightning

        return branch(self, request, at, factors, lr_rule, horizon)

    def stacked_refusal(self, optimizer: str, precision: str, devices: int
                        ) -> tuple[str, str] | None:
        """Trials train at once (:mod:`tuner.train.many`) with an optimizer it stacks, on one
        device in 32-bit precision, with the default loss, and a plain module without dropout
        or batch norm (built on the meta device to look; nothing is allocated)."""
        import torch  # heavy: torch, only when needed
        from lightning import LightningModule  # heavy: lightning, only when needed

        from tuner.train.stacked import STACKED  # heavy: torch

        key = "trainer.trials_at_once"
        if optimizer not in STACKED:
            return ("optimizer.name", f"{optimizer!r} cannot train trials at once "
                    f"(trainer.trials_at_once > 1); allowed: {', '.join(STACKED)}")
        if precision != "32-true":
            return ("trainer.precision", f"{precision!r} with trials_at_once > 1; allowed: "
                    "32-true")
        if devices != 1:
            return ("trainer.devices", "trials_at_once > 1 trains on one device; allowed: 1")
        if type(self).training_loss is not TrainedWorkload.training_loss:
            return (key, f"workload {self.name!r} has its own training_loss, which trials at "
                    "once cannot vectorise; allowed: 1")
        try:
            with torch.device("meta"):
                model = self.build_model()
        except Exception as exc:  # noqa: BLE001 - plug-in code
            return (key, f"workload {self.name!r}'s model does not build on the meta device "
                    f"({_one_line(exc)}); allowed: 1")
        if isinstance(model, LightningModule):
            return (key, f"workload {self.name!r}'s model is a LightningModule, whose "
                    "training_step trials at once cannot vectorise; allowed: 1")
        nn = torch.nn
        tied = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                nn.SyncBatchNorm)
        if found := next((m for m in model.modules() if isinstance(m, tied)), None):
            return (key, f"workload {self.name!r}'s model has {type(found).__name__}, whose "
                    "random masks or running statistics would tie the trials together; "
                    "allowed: 1")
        if frozen := next((n for n, p in model.named_parameters() if not p.requires_grad), None):
            return (key, f"workload {self.name!r}'s model has a frozen parameter ({frozen}), "
                    "which trials at once do not leave out of the update; allowed: 1")
        if next(model.buffers(), None) is not None:
            return (key, f"workload {self.name!r}'s model has buffers, which trials at once "
                    "do not update; allowed: 1")
        return None

    def run_many(self, next_trial: Callable[[], tuple[Any, TrialRequest, Reporter] | None],
                 done: Callable[[Any, TrialResult], None], k: int) -> int:
        """Train up to ``k`` trials at once as one vectorised model (:mod:`tuner.train.many`),
        on a GPU when there is one and the spec's accelerator allows it."""
        from tuner.train.loop import make_fabric  # heavy: torch and lightning
        from tuner.train.many import train_many

        first = next_trial()
        if first is None:
            return 0
        device = make_fabric(first[1].accelerator, first[1].precision).device  # as train_on
        queue = [first]
        return train_many(self, lambda: queue.pop() if queue else next_trial(), done, k, device)

    def run(self, request: TrialRequest, report: Reporter) -> TrialResult:
        """Train with the shared Lightning loop."""
        from tuner.train.trial import train  # heavy: torch and lightning

        return train(self, request, report)
