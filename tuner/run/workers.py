"""``tuner run --workers N``: N local worker processes on one storage, one GPU each if asked.

Each worker is a plain ``tuner run`` process (the same command a user starts on another
machine); the work queue (:mod:`tuner.run.trialqueue`) shares the trials out. Progress lines come
back prefixed with the worker's number; SIGINT/SIGTERM here stop every worker cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable

from tuner.core.errors import UsageError
from tuner.run.signals import stop_cleanly


def parse_gpus(text: str | None) -> list[str]:
    """``"0,1,3"`` -> ``["0", "1", "3"]``.

    Raises:
        UsageError: not a comma-separated list of distinct non-negative integers.
    """
    if text is None:
        return []
    ids = [g.strip() for g in text.split(",")]
    if not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
        raise UsageError(f"--gpus {text!r}: allowed: distinct GPU indices separated by commas, "
                         "e.g. 0,1,2,3")
    return ids


#: The variables that size torch's intra-op thread pool (MKL's overrides OpenMP's).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpus() -> int:
    """The logical CPUs this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(n: int) -> int | None:
    """CPU threads (``OMP_NUM_THREADS``, which sizes torch's intra-op pool) for each of ``n``
    local workers: the logical CPUs shared out among them, at least one each; None for one
    worker, or when the user set ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` (theirs is kept).
    Without it every worker's torch would start a thread per physical core, and ``n`` such
    pools oversubscribe the machine (torchrun sets 1 per process for the same reason)."""
    if n == 1 or any(os.environ.get(v) for v in THREAD_VARS):
        return None
    return max(1, cpus() // n)


def threads_said(threads: int | None) -> str:
    """What the launcher's start line says of its workers' threads."""
    if threads is not None:
        return (f", {threads} CPU thread{'s' * (threads > 1)} each (OMP_NUM_THREADS; set it "
                "to choose)")
    mine = [f"{v}={os.environ[v]}" for v in THREAD_VARS if os.environ.get(v)]
    return f", {' '.join(mine)} each (yours)" if mine else ""


def launch(args: list[str], n: int, gpus: list[str], echo: Callable[[str], None],
           threads: int | None = None) -> int:
    """Run ``tuner ARGS`` in ``n`` processes (worker k sees GPU ``gpus[k % len(gpus)]`` only,
    and with ``threads`` has ``OMP_NUM_THREADS`` set to it); wait for all; return 0, or the
    first non-zero exit status."""
    procs: list[subprocess.Popen[str]] = []
    readers: list[threading.Thread] = []
    try:
        with stop_cleanly():
            for k in range(n):
                env = dict(os.environ)
                if threads is not None:
                    env["OMP_NUM_THREADS"] = str(threads)
                tag = f"[worker {k}] "
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
                    tag = f"[worker {k} gpu {gpus[k % len(gpus)]}] "
                p = subprocess.Popen([sys.executable, "-m", "tuner.cli", *args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                procs.append(p)
                readers.append(threading.Thread(target=_relay, args=(p, tag, echo), daemon=True))
                readers[-1].start()
            codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()  # SIGTERM: the worker re-queues its running trial and exits
        for p in procs:
            p.wait()
        raise
    finally:
        for t in readers:
            t.join(timeout=5)
    return next((c for c in codes if c), 0)


def _relay(p: subprocess.Popen[str], tag: str, echo: Callable[[str], None]) -> None:
    assert p.stderr is not None
    for line in p.stderr:
        echo(tag + line.rstrip("\n"))
