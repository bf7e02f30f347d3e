"""The words of the local critical batch size: branches from a reference run.

Merrill et al. 2025 ("Critical batch size revisited"): train one reference run at batch size
B0; at chosen points of it (examples seen), branch off copies that train at k B0 (k = 2, 4, 8,
...) with the learning rate scaled by a stated rule, each for the same number of examples as
the reference trains from that point (``horizon`` reference steps, so horizon / k steps at
k B0). The local critical batch size at that point is the largest k B0 whose loss at the end
is within ``tolerance`` (relative) of the reference's at the same examples, every smaller
factor included (a branch that does not keep up ends the search). It starts small and grows
along training, which is what motivates batch-size warmup.

Plain data and arithmetic shared by every layer: a workload computes the branches
(:meth:`tuner.workload.Workload.branch`; the NQM exactly), ``tuner/run/branching.py`` stores
them as a study attr, the CLI prints them. See docs/DESIGN.md, section 1 (*local critical batch
size*).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

#: How a branch's learning rate follows its batch size factor k.
LR_RULES: dict[str, Callable[[float], float]] = {
    "linear": lambda k: k, "sqrt": math.sqrt, "constant": lambda k: 1.0}


@dataclass
class Branch:
    """One branch: ``factor`` x B0 from a checkpoint, trained ``steps`` steps."""

    factor: int
    batch_size: int
    learning_rate: float
    steps: int
    loss: float | None  # at the end (None: diverged, not finite)

    def within(self, reference: float, tolerance: float) -> bool:
        """Whether its loss keeps up with ``reference`` within ``tolerance`` (relative)."""
        return self.loss is not None and self.loss <= reference * (1.0 + tolerance)


@dataclass
class Checkpoint:
    """The branches from one point of the reference run."""

    step: int  # of the reference run
    examples: int  # seen by then
    loss: float | None  # the reference's, at the checkpoint (None: not evaluated there)
    reference_loss: float  # the reference's, ``horizon`` steps later
    branches: list[Branch] = field(default_factory=list)
    local_cbs: int = 0  # set by :func:`finish`


@dataclass
class LocalCBS:
    """A local-CBS measurement: the reference run's setting and its checkpoints."""

    batch_size: int  # B0
    lr_rule: str
    tolerance: float
    horizon: int  # reference steps after each checkpoint
    method: str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    params_from: str = ""
    #: checkpoints planned (more than ``checkpoints`` when the reference diverged on the way)
    planned: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored (study attr ``local_cbs``) and printed."""
        return asdict(self)


def local_cbs(b0: int, reference: float, branches: list[Branch], tolerance: float) -> int:
    """The largest batch size that keeps up, every smaller factor included (B0 itself when
    none does)."""
    best = b0
    for br in sorted(branches, key=lambda x: x.factor):
        if not br.within(reference, tolerance):
            break
        best = br.batch_size
    return best


def finish(result: LocalCBS) -> LocalCBS:
    """``result`` with each checkpoint's local critical batch size set."""
    for c in result.checkpoints:
        c.local_cbs = local_cbs(result.batch_size, c.reference_loss, c.branches,
                                result.tolerance)
    return result


def checkpoint_steps(total: int, points: int, horizon: int) -> list[int]:
    """``points`` checkpoints spread evenly over a reference run of ``total`` steps, the first
    at step 0, each at least ``horizon`` steps before the end of the run if it can be."""
    last = max(0, total - horizon)
    if points <= 1 or last == 0:
        return [0]
    return sorted({round(i * last / (points - 1)) for i in range(points)})
