"""One trial of a LightningModule on several devices: ``Trainer(strategy="ddp")`` in
``devices`` rank processes that this process starts, one Optuna trial.

Each rank builds the module and DataModule itself from the (pickled) workload and request,
seeded alike, with B / devices examples per batch; Lightning's DDP strategy finds the ranks from
the environment (``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``, ``LOCAL_RANK``: processes
created externally, as under ``torchrun``), puts a ``DistributedSampler`` (seeded with the trial's
seed) under both loaders and averages the gradients, so a step is one update on a global batch of
B. Validation runs on every rank over its shard, as in the user's own DDP ``Trainer.fit``: log
validation metrics with ``sync_dist=True`` (torchmetrics objects sync themselves). Rank 0 sends
(step, metrics) here over a queue, this process reports to Optuna and answers "prune or not",
and rank 0 broadcasts the answer (:class:`tuner.train.fit.TrialCallback`). Only this process
talks to the storage.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import threading
from typing import TYPE_CHECKING, Any

from tuner.core.errors import one_line
from tuner.core.trial import Reporter, TrialRequest, TrialResult
from tuner.train.ddp import relay

if TYPE_CHECKING:
    from multiprocessing.queues import Queue


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_ddp(workload: Any, req: TrialRequest, report: Reporter) -> TrialResult:
    """Run one trial of ``workload`` (a :class:`tuner.workload.lightning.LightningWorkload`)
    with DDP on ``req.devices`` devices; rank 0's result.

    Raises:
        RuntimeError: a rank failed (its exception's last line) or died.
    """
    import torch.multiprocessing as mp  # heavy: torch, only when needed

    ctx = mp.get_context("spawn")
    up: Queue = ctx.Queue()  # rank 0 -> here: (step, metrics)
    down: Queue = ctx.Queue()  # here -> rank 0: stop?
    done: Queue = ctx.Queue()  # each rank: ("ok", rank, result | None) or ("error", rank, text)
    errors: list[BaseException] = []
    thread = threading.Thread(target=relay, args=(up, down, report, errors), daemon=True)
    thread.start()
    job = pickle.dumps((workload, req))
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(job, rank, req.devices, port, up, down, done),
                         daemon=True) for rank in range(req.devices)]
    for p in procs:
        p.start()
    result: TrialResult | None = None
    try:
        pending = set(range(req.devices))
        while pending:
            try:
                kind, rank, payload = done.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r in pending if procs[r].exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"DDP rank {dead[0]} died (exit code "
                                       f"{procs[dead[0]].exitcode})") from None
                continue
            pending.discard(rank)
            if kind == "error":
                raise RuntimeError(f"DDP rank {rank}: {payload}")
            if rank == 0:
                result = payload
    finally:
        up.put(None)
        thread.join(timeout=10)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    if errors:
        raise errors[0]
    assert result is not None
    return result


def _rank_main(job: bytes, rank: int, world: int, port: int, up: Queue, down: Queue,
               done: Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0",
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    workload, req = pickle.loads(job)

    def report(step: int, metrics: dict[str, float]) -> bool:
        up.put((step, metrics))
        return down.get()

    try:
        result = workload.run_here(req, report if rank == 0 else None)
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
        done.put(("error", rank, one_line(exc)))
        return
    done.put(("ok", rank, result if rank == 0 else None))
