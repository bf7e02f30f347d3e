"""The one Lightning internal tuner touches, in one place: ``self.log``'s per-call device walk.

Every ``self.log(name, value)`` in a LightningModule ends in
``_ResultCollection.log`` calling ``self[key].to(value.device)`` on the metric's
``_ResultMetric``, and ``_ResultMetric.to`` walks the metric's whole ``__dict__`` with
``apply_to_collection`` (deep-copying its metadata dataclass) even when every tensor is already
on that device. Measured on this project's 2-core CPU, a ``self.log`` call costs 0.53 ms with
that walk and 0.20 ms without (``benchmarks/dataloader_speed.py --log-cost``; Lightning issue
#20388, "Major performance degradation when multiple metrics/losses", and its open fix, pull
request #21769).
A trial runs thousands of short steps, so this is paid thousands of times per logged metric.

:func:`fast_logging` skips that walk while our trial's ``Trainer.fit`` runs, and only where it
moves nothing: ``.to(device)`` with a single ``torch.device`` argument, on a tensor-valued
metric whose every state tensor (the value, the cumulated batch size, the forward cache, the
computed value and the defaults) is already on that device. Any other call (a dtype, another
device, a logged torchmetrics ``Metric``, a state elsewhere) runs Lightning's own ``to``. The
walk it skips would have returned the same tensors (``Tensor.to`` of a tensor already there is
the tensor itself) and an equal copy of the metadata, so the logged values, their reductions
and ``trainer.callback_metrics`` are unchanged (``tests/train/test_lightning_compat.py``).

It is applied only for the Lightning versions it was written against (:data:`TESTED`) and where
the private class it replaces a method of is where it was; elsewhere :data:`ACTIVE` is False and
:func:`fast_logging` does nothing (slower, never wrong). The user's own code outside our trials
is never affected: the original method is restored when the fit ends.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import lightning
import torch

#: Lightning (major, minor) versions this was written and tested against (2.6.6; pyproject admits
#: 2.4 and 2.5 too, where it stays off: their ``_ResultMetric.to`` looks the same, untested here).
TESTED = ((2, 6),)


def _version() -> tuple[int, int]:
    major, minor = lightning.__version__.split(".")[:2]
    return int(major), int(minor)


try:
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric
except ImportError:  # moved or renamed in a later Lightning: run its own code
    _ResultMetric = None  # type: ignore[assignment,misc]

#: Whether :func:`fast_logging` applies on the installed Lightning.
ACTIVE = _ResultMetric is not None and _version() in TESTED
#: Lightning's own ``_ResultMetric.to``.
ORIGINAL: Callable[..., Any] | None = _ResultMetric.to if _ResultMetric is not None else None

#: The tensor states of a tensor-valued ``_ResultMetric`` (besides its ``_defaults``).
STATES = ("value", "cumulated_batch_size", "_forward_cache", "_computed")


def already_on(metric: Any, device: torch.device) -> bool:
    """Whether every state tensor of the tensor-valued ``_ResultMetric`` ``metric`` is on
    ``device`` (so that moving it there moves nothing)."""
    state = metric.__dict__
    if not state.get("is_tensor", False):
        return False
    tensors = [state.get(name) for name in STATES] + list(state.get("_defaults", {}).values())
    return all(t is None or (isinstance(t, torch.Tensor) and t.device == device)
               for t in tensors)


def _to(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``_ResultMetric.to``, returning at once where it would move nothing."""
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.device) \
            and already_on(self, args[0]):
        return self
    return ORIGINAL(self, *args, **kwargs)  # type: ignore[misc]


@contextlib.contextmanager
def fast_logging() -> Iterator[bool]:
    """While inside: ``self.log`` skips the device walk that moves nothing (module docstring).
    Yields whether it applies (:data:`ACTIVE`). Re-entrant; restores Lightning's method."""
    if not ACTIVE or _ResultMetric.to is not ORIGINAL:  # off; or patched already (by an outer
        yield ACTIVE and _ResultMetric.to is _to  # fast_logging, or by someone else: theirs stays)
        return
    _ResultMetric.to = _to
    try:
        yield True
    finally:
        _ResultMetric.to = ORIGINAL
