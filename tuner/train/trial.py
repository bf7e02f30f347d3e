"""One trial of a trained workload: on one device (:mod:`tuner.train.loop`), or with DDP over
several (:mod:`tuner.train.ddp`) when the spec asks for ``[trainer] devices > 1``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.core.trial import Reporter, TrialRequest, TrialResult
from tuner.train.loop import make_fabric, train_on

if TYPE_CHECKING:
    from tuner.workload.trained import (
        TrainedWorkload,  # a type only (not a runtime import)
    )


def train(workload: TrainedWorkload, req: TrialRequest, report: Reporter) -> TrialResult:
    """Train one trial; see :mod:`tuner.train.loop` for the stopping rule."""
    if req.devices > 1:
        from tuner.train.ddp import train_ddp  # spawns processes: only when asked for

        return train_ddp(workload, req, report)
    return train_on(make_fabric(req.accelerator, req.precision), workload, req, report)
