"""Before a run starts: is the spec's device here, and do its trials fit this machine?

A spec can be valid and still unrunnable here: ``accelerator = "cuda"`` on a machine without a
GPU, a batch or a model whose tensors need more memory than there is, or a cadence that would
evaluate (and store) every step of a billion-step budget. Lightning, torch and numpy find these
out at the first trial, after the studies were created, with a long traceback; these checks say
so in one line before anything is written. The size checks are estimates: ``tuner run
--allow-large`` skips them.
"""

from __future__ import annotations

import glob
import math
import os

from tuner.core.errors import UsageError
from tuner.spec import Spec

#: More evaluations than this in one trial is refused (each one is a validation pass and a
#: stored intermediate value).
MAX_EVALS = 10_000


def check_devices(spec: Spec, gpu_ids: list[str]) -> None:
    """Refuse an accelerator, ``--gpus`` or ``[trainer] devices`` this machine does not have.

    Raises:
        UsageError: one line naming the spec key or option and what is available.
    """
    if spec.accelerator in ("auto", "cpu") and not gpu_ids and spec.devices <= 1:
        return  # nothing below can refuse it: no torch import (seconds) for CPU runs, the NQM
    import torch  # heavy: torch, only when needed

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    acc = spec.accelerator
    if acc in ("cuda", "gpu") and n_cuda == 0 and not (acc == "gpu" and _mps()):
        raise UsageError(f"{spec.path}: trainer.accelerator: {acc!r}, but this machine has no "
                         "CUDA GPU (torch.cuda.is_available() is False); allowed here: auto, cpu")
    if acc == "mps" and not _mps():
        raise UsageError(f"{spec.path}: trainer.accelerator: 'mps', but this machine has no "
                         "Apple GPU (torch.backends.mps.is_available() is False); allowed here: "
                         "auto, cpu")
    if gpu_ids:
        if n_cuda == 0:
            raise UsageError(f"--gpus {','.join(gpu_ids)}: this machine has no CUDA GPU "
                             "(torch.cuda.is_available() is False); allowed: no --gpus "
                             "(--workers N runs N workers on the CPU)")
        if bad := [g for g in gpu_ids if int(g) >= n_cuda]:
            raise UsageError(f"--gpus {','.join(gpu_ids)}: there is no GPU {bad[0]}; allowed: "
                             f"indices 0..{n_cuda - 1} ({n_cuda} GPU(s) here)")
    on_gpu = acc in ("cuda", "gpu") or (acc == "auto" and n_cuda > 0)
    if spec.devices > 1 and on_gpu and not gpu_ids and spec.devices > n_cuda:
        raise UsageError(f"{spec.path}: trainer.devices: {spec.devices} GPUs per trial, but "
                         f"this machine has {n_cuda}; allowed: 1..{max(n_cuda, 1)}, or "
                         "accelerator = 'cpu'")


def _mps() -> bool:
    import torch  # heavy: torch, only when needed

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def count_evals(spec: Spec, batch_size: int, limit: int) -> int:
    """Evaluations per trial at ``batch_size`` (as :meth:`Spec.eval_steps` would list them),
    counted without listing them and only up to ``limit + 1``."""
    first, interval = spec.eval_spacing(batch_size)
    max_steps, relative = spec.max_steps(batch_size), spec.cadence.relative
    if max_steps < first:
        return 0
    n, step = 1, first
    while n <= limit:
        nxt = step + max(interval, math.ceil(relative * step))
        if nxt >= max_steps:
            return n + (step != max_steps)
        step, n = nxt, n + 1
    return n


def available_memory(spec: Spec) -> tuple[int, str]:
    """(bytes free, where) on the device trials will use: the GPU's free memory when trials
    train on one, else the host's MemAvailable."""
    if spec.accelerator in ("cuda", "gpu", "auto") and _may_have_cuda():
        import torch  # heavy: torch, only when needed

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0]), "free on GPU 0"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available memory"
    except OSError:
        pass

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available memory"


def _may_have_cuda() -> bool:
    """False where CUDA cannot be there: no NVIDIA device node (``/dev/nvidia0``..., or WSL's
    ``/dev/dxg``), so importing torch (seconds) to ask is skipped."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg"))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError


def check_sizes(spec: Spec, batch_sizes: tuple[int, ...]) -> None:
    """Refuse batch sizes whose trials would evaluate more than :data:`MAX_EVALS` times or
    need more memory than is free (the workload's :meth:`~tuner.workload.Workload.memory_bytes`
    estimate).

    Raises:
        UsageError: one line naming the batch size, the estimate, and ``--allow-large``.
    """
    for b in batch_sizes:
        n = count_evals(spec, b, MAX_EVALS)
        if n > MAX_EVALS:
            c = spec.cadence
            raise UsageError(
                f"{spec.path}: eval: more than {MAX_EVALS} evaluations per trial at batch size "
                f"{b} (budget {spec.max_steps(b)} steps, first_step {c.first_step}, relative "
                f"{c.relative}, min_interval {c.min_interval}); allowed: a coarser cadence (e.g. "
                "relative = 0.02), or tuner run --allow-large")
    free, where = available_memory(spec)
    for b in sorted(batch_sizes, reverse=True):
        need = spec.workload.memory_bytes(b, spec.optimizer, spec.precision)
        if need is not None and need > free:
            raise UsageError(
                f"{spec.path}: batch_sizes: a trial of workload {spec.workload_name!r} at batch "
                f"size {b} needs about {_size(need)} (estimated), more than the {_size(free)} "
                f"{where}; allowed: smaller batch sizes or a smaller [workload], or tuner run "
                "--allow-large")
