"""The words of predicting the critical batch size: the gradient noise scale.

Plain data and arithmetic shared by every layer: a workload measures the noise scale
(``tuner/train/noise.py`` for trained workloads, exactly in closed form for the NQM),
``tuner/run/predict.py`` stores it as a study attr, and ``tuner/analysis/cbs.py`` shows it beside
the fitted curve. See docs/DESIGN.md, section 1 (*noise scale*).

McCandlish et al. 2018 ("An empirical model of large-batch training"), Appendix A.1: with G the
true gradient and Sigma the per-example gradient covariance, a batch of b examples has
E|G_b|^2 = |G|^2 + tr(Sigma) / b. Two batch sizes b < B give the unbiased estimates

    |G|^2    ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

and B_simple = tr(Sigma) / |G|^2, the noise scale that predicts the critical batch size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: How the run's B_simple is summarised from its points (McCandlish et al. 2018, App. A.1:
#: each estimator is unbiased but noisy, so they are averaged before the ratio is taken).
SUMMARY = "ratio of the means of tr(Sigma) and |G|^2 over every measured point"


def two_batch(small: int, big: int, small_sq: float, big_sq: float) -> tuple[float, float]:
    """``(|G|^2, tr(Sigma))`` estimated from ``small_sq`` = |G_small|^2 (a gradient over
    ``small`` examples, or the mean of several such squared norms) and ``big_sq`` =
    |G_big|^2 (over ``big`` examples). Each is unbiased; either may be negative at one point.

    Raises:
        ValueError: unless 0 < small < big.
    """
    if not 0 < small < big:
        raise ValueError(f"two batch sizes 0 < small < big are needed, not {small}, {big}")
    grad_sq = (big * big_sq - small * small_sq) / (big - small)
    trace = (small_sq - big_sq) / (1.0 / small - 1.0 / big)
    return grad_sq, trace


def two_batch_method(batch_size: int, micro_batches: int, ddp: bool = False) -> str:
    """The estimator of a run, in words (``ddp``: the micro-batches are the ranks' shards)."""
    if ddp:
        return (f"two-batch estimator (McCandlish et al. 2018, App. A.1) under DDP: the "
                f"per-rank gradients of {micro_batches} ranks ({batch_size // micro_batches} "
                f"examples each) and their all-reduced mean ({batch_size}), measured before "
                f"the step's update")
    return (f"two-batch estimator (McCandlish et al. 2018, App. A.1): each batch of "
            f"{batch_size} split into {micro_batches} micro-batches of "
            f"{batch_size // micro_batches}, measured before the step's update")


def ema_ratio(trace: list[float], grad: list[float], decay: float) -> list[float]:
    """B_simple at each point: the ratio of the moving averages of ``trace`` and ``grad``
    (bias-corrected as Adam's, so the first point is its own ratio; ``decay`` 0: no
    averaging). nan where the averaged |G|^2 is not positive."""
    out, s, g, w = [], 0.0, 0.0, 0.0
    for ts, gs in zip(trace, grad):
        s = decay * s + (1 - decay) * ts
        g = decay * g + (1 - decay) * gs
        w = decay * w + (1 - decay)
        out.append((s / w) / (g / w) if g > 0 else math.nan)
    return out


@dataclass
class NoisePoint:
    """The gradient noise scale at the parameters after ``step`` training steps."""

    step: int
    examples: int  # step x B
    grad_norm_sq: float  # |G|^2, the squared norm of the true gradient (an estimate or exact)
    trace_sigma: float  # tr(Sigma), Sigma the per-example gradient covariance
    #: tr(Sigma) / |G|^2 of the moving averages up to this point (:func:`ema_ratio`; exact for
    #: the NQM); None while the averaged |G|^2 is not positive
    b_simple: float | None


@dataclass
class NoiseScale:
    """One run's noise-scale measurement (``tuner noise-scale``)."""

    batch_size: int
    points: list[NoisePoint]
    method: str  # in words: "two-batch estimator, ..." or "exact (closed form)"
    small_batch: int = 0  # the estimator's two batch sizes (0: exact)
    big_batch: int = 0
    ema: float = 0.0  # the moving average's decay per measured point (0: none)
    params: dict[str, Any] = field(default_factory=dict)  # the metaparameters trained with
    params_from: str = ""  # where they came from, in words
    steps: int = 0  # training steps run
    diverged_at: int | None = None  # the step whose loss was not finite (the run stopped)

    @property
    def b_simple(self) -> float | None:
        """The run's estimate, :data:`SUMMARY` (None when the mean |G|^2 is not positive)."""
        if not self.points:
            return None
        g = sum(p.grad_norm_sq for p in self.points) / len(self.points)
        s = sum(p.trace_sigma for p in self.points) / len(self.points)
        return s / g if g > 0 else None

    def to_json(self) -> dict[str, Any]:
        """The ``noise_scale`` study attr and the JSON of ``tuner noise-scale`` (less spec)."""
        return {"batch_size": self.batch_size, "points": [asdict(p) for p in self.points],
                "b_simple": self.b_simple, "summary": SUMMARY, "method": self.method,
                "small_batch": self.small_batch, "big_batch": self.big_batch,
                "ema": self.ema, "params": self.params, "params_from": self.params_from,
                "steps": self.steps, "diverged_at": self.diverged_at}


def finish(batch_size: int, raw: list[tuple[int, float, float]], ema: float, **kw: Any
           ) -> NoiseScale:
    """A :class:`NoiseScale` from ``(step, |G|^2, tr(Sigma))`` per measured point, each point's
    B_simple the ratio of the moving averages (``ema``: their decay per point)."""
    ratios = ema_ratio([t for _, _, t in raw], [g for _, g, _ in raw], ema)
    points = [NoisePoint(s, s * batch_size, g, t, r if math.isfinite(r) else None)
              for (s, g, t), r in zip(raw, ratios)]
    return NoiseScale(batch_size, points, ema=ema, **kw)


def estimated(batch_size: int, micro_batches: int, raw: list[tuple[int, float, float]],
              ema: float, steps: int, diverged_at: int | None, ddp: bool = False) -> NoiseScale:
    """:func:`finish` for a run measured by the two-batch estimator over ``micro_batches``
    micro-batches of each batch (``ddp``: the ranks' shards)."""
    return finish(batch_size, raw, ema, method=two_batch_method(batch_size, micro_batches, ddp),
                  small_batch=batch_size // micro_batches, big_batch=batch_size, steps=steps,
                  diverged_at=diverged_at)


def measure_steps(steps: int, points: int) -> list[int]:
    """``points`` distinct steps spread evenly over ``[0, steps)`` (step 0: at
    initialisation), each measured before that step's update."""
    n = max(1, min(points, steps))
    return sorted({(i * steps) // n for i in range(n)})
