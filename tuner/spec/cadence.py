"""Evaluation cadence: the steps at which validation runs, shared by every trial of a study.

Steps grow geometrically: the next evaluation is at least ``relative`` (e.g. 2 %) more steps than
the last, and at least ``min_interval`` steps later. So steps-to-target has a bounded *relative*
resolution at every batch size, and all trials of one study evaluate at the same steps (which is
what pruners comparing values at equal steps need). The budget's last step is always evaluated.

An evaluation costs a forward pass over the validation set: by FLOPs a third of training on as
many examples (forward vs forward + backward), but measured on the 2-core CPU here, the
Fashion-MNIST CNN evaluated an example at 0.29-0.50 of the cost of training on one (B = 2048 ..
64; ``benchmarks/eval_share.py``), so it is counted as half: ``val_examples / (2 B)`` steps.
``max_share`` bounds evaluation's share of a trial's time under that model by spacing evaluations
at least :func:`share_interval` steps apart (the first one too), except the budget's last step,
which is always evaluated, however soon after the one before: a trial that runs its whole budget
may spend up to one more evaluation. Cheaper trials, coarser steps-to-target. The measured share
is each trial's ``eval_share`` attr.
"""

from __future__ import annotations

import math


def eval_steps(max_steps: int, first_step: int, relative: float, min_interval: int
               ) -> tuple[int, ...]:
    """The increasing evaluation steps in ``[first_step, max_steps]``, ending at ``max_steps``."""
    if max_steps < first_step:
        return ()
    steps = [first_step]
    while True:
        nxt = steps[-1] + max(min_interval, math.ceil(relative * steps[-1]))
        if nxt >= max_steps:
            break
        steps.append(nxt)
    if steps[-1] != max_steps:
        steps.append(max_steps)
    return tuple(steps)


#: An evaluated example's cost in training examples' cost: 1/3 by FLOPs, up to 1/2 measured.
EVAL_COST = 1 / 2


def share_interval(val_examples: int, batch_size: int, max_share: float) -> int:
    """The fewest steps between evaluations for evaluation to take at most ``max_share`` of a
    trial's time, when evaluating one example costs ``EVAL_COST`` of training on one."""
    eval_cost_in_steps = EVAL_COST * val_examples / batch_size
    return max(1, math.ceil(eval_cost_in_steps * (1 - max_share) / max_share - 1e-9))


def resolution(steps: tuple[int, ...], step: int) -> int:
    """The step of the evaluation before ``step`` (0 for the first).

    A target first seen at evaluation ``step`` was crossed somewhere in
    ``(resolution(steps, step), step]``; the reported steps-to-target is that interval's upper end.
    """
    i = steps.index(step)
    return steps[i - 1] if i > 0 else 0
