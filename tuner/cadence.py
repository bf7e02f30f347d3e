"""Evaluation cadence: the steps at which validation runs, shared by every trial of a study.

Steps grow geometrically: the next evaluation is at least ``relative`` (e.g. 2 %) more steps than
the last, and at least ``min_interval`` steps later. So steps-to-target has a bounded *relative*
resolution at every batch size, and all trials of one study evaluate at the same steps (which is
what pruners comparing values at equal steps need). The budget's last step is always evaluated.
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


def resolution(steps: tuple[int, ...], step: int) -> int:
    """The step of the evaluation before ``step`` (0 for the first).

    A target first seen at evaluation ``step`` was crossed somewhere in
    ``(resolution(steps, step), step]``; the reported steps-to-target is that interval's upper end.
    """
    i = steps.index(step)
    return steps[i - 1] if i > 0 else 0
