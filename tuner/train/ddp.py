"""One trial on several devices: Lightning Fabric's ``ddp_spawn``, one Optuna trial.

This process keeps the Optuna trial and starts ``devices`` rank processes (Fabric's launcher,
NCCL on GPUs, gloo on CPU). Each rank trains on its share of every global batch of B examples
(B / devices each; DDP averages the gradients, so a step is the same step as on one device).
Only rank 0 evaluates; it sends (step, metrics) here over a queue, this process reports to
Optuna and answers "prune or not", and rank 0 broadcasts the answer to the other ranks (in
:func:`tuner.train.loop.train_on`). Optuna's own Lightning callback would run the objective once per
rank under plain ``ddp``; here nothing but this process talks to the storage.
"""

from __future__ import annotations

import pickle
import threading
from typing import TYPE_CHECKING, Any

from tuner.core.trial import Reporter, TrialRequest, TrialResult
from tuner.train.loop import train_on

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from tuner.workload.trained import (
        TrainedWorkload,  # a type only (not a runtime import)
    )


def train_ddp(workload: TrainedWorkload, req: TrialRequest, report: Reporter) -> TrialResult:
    """Train one trial with DDP on ``req.devices`` devices; rank 0's result."""
    import torch.multiprocessing as mp  # heavy: torch, only when needed
    from lightning.fabric import Fabric  # heavy: lightning, only when needed

    ctx = mp.get_context("spawn")
    up: Queue = ctx.Queue()  # rank 0 -> here: (step, metrics), then None when done
    down: Queue = ctx.Queue()  # here -> rank 0: stop?
    errors: list[BaseException] = []  # what report raised (the trial then stops, and raises it)
    thread = threading.Thread(target=relay, args=(up, down, report, errors), daemon=True)
    thread.start()
    fabric = Fabric(accelerator=req.accelerator, devices=req.devices, strategy="ddp_spawn",
                    precision=req.precision, loggers=[])
    try:
        # pickled: Fabric's launcher walks its arguments and refuses frozen dataclasses
        result = fabric.launch(_rank_main, pickle.dumps((workload, req)), up, down)
    finally:
        up.put(None)
        thread.join(timeout=10)
    if errors:
        raise errors[0]
    return result


def relay(up: Queue, down: Queue, report: Reporter, errors: list[BaseException]) -> None:
    """Answer rank 0's reports. If ``report`` raises (e.g. the storage is gone), the answer is
    "stop", so that no rank waits forever, and the error is kept for :func:`train_ddp`."""
    while (msg := up.get()) is not None:
        step, metrics = msg
        try:
            stop = bool(report(step, metrics))
        except BaseException as e:  # noqa: BLE001 - re-raised by train_ddp
            errors.append(e)
            stop = True
        down.put(stop)


def _rank_main(fabric: Any, job: bytes, up: Queue, down: Queue) -> TrialResult:
    import torch.distributed  # heavy: torch, only when needed

    workload, req = pickle.loads(job)

    def report(step: int, metrics: dict[str, float]) -> bool:
        up.put((step, metrics))
        return down.get()

    result = train_on(fabric, workload, req, report)
    # Leave together and close the process group before the process exits: a rank that exits
    # while gloo's threads still run aborts ("terminate called without an active exception").
    fabric.barrier()
    torch.distributed.destroy_process_group()
    return result
