"""A user's LightningModule's ``training_step`` called outside Lightning's loop, to measure
(the gradient noise scale's probe, ``tuner confirm``'s sharpness): its loss, with its
``self.log`` silenced."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import LightningModule


@contextlib.contextmanager
def logging_silenced(module: LightningModule) -> Iterator[None]:
    """While inside, the instance's ``log`` and ``log_dict`` do nothing (measuring logs
    nothing); the class's own methods again on exit."""
    module.log = module.log_dict = lambda *a, **kw: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log, module.log_dict


def step_loss(module: LightningModule, batch: Any, batch_idx: int) -> torch.Tensor:
    """The loss ``training_step`` returns for ``batch`` (the tensor, or its dict's ``"loss"``)."""
    out = module.training_step(batch, batch_idx)
    return out["loss"] if isinstance(out, dict) else out
