"""Three definitions of the critical batch size, side by side.

- **B_crit** (McCandlish et al. 2018): E_min / S_min of the fitted S(B) = S_min (1 + B_noise/B)
  (:mod:`tuner.analysis.fit`): the batch size where training takes twice the fewest steps and
  twice the fewest examples.
- **B_20%** (Zhang et al. 2024, "How does critical batch size scale in pre-training?"): the
  batch size where the measured steps exceed perfect scaling by 20 %: S(B) B / (S(B0) B0) =
  1.2 with B0 the smallest batch size that reached the target, interpolated linearly in log B
  and log of that ratio between the last point below and the first at or above 1.2 (the first
  crossing), with a bootstrap interval over the same resamples as the fit's. It assumes B0 is
  in the perfect-scaling regime (else it is relative to B0).
- **B_simple** (McCandlish et al. 2018): the gradient noise scale tr(Sigma) / |G|^2 of a run
  at fixed metaparameters (``tuner noise-scale``, stored as the study attr ``noise_scale``):
  a prediction from gradient statistics, not from the tuned curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from tuner.analysis.fit import Fit, bootstrap_bests
from tuner.analysis.records import TrialRecord

#: Zhang et al.'s overhead over perfect scaling.
OVERHEAD = 0.2

#: The three definitions in two sentences each (the report and ``tuner curve --help``).
MEANINGS = {
    "b_crit": "McCandlish et al.'s B_crit = E_min / S_min of the fitted curve S(B) = S_min "
              "(1 + B_crit/B): at B_crit training takes twice the fewest steps and twice the "
              "fewest examples. It describes the whole measured curve and needs a good fit.",
    "b_overhead": "Zhang et al.'s critical batch size: where the measured steps exceed perfect "
                  "scaling from the smallest batch size by 20 %, interpolated between measured "
                  "points. It reads the measurements directly, with no model, but is only as "
                  "good as the smallest batch size's point.",
    "b_simple": "McCandlish et al.'s gradient noise scale tr(Sigma)/|G|^2, measured along one "
                "run at fixed metaparameters (tuner noise-scale): the batch size at which "
                "gradient noise and signal are equal. It predicts B_crit without tuning at "
                "every batch size, and they found it within an order of magnitude of B_crit.",
}


def overhead_cbs(batch_sizes: Sequence[int], steps: Sequence[float],
                 overhead: float = OVERHEAD) -> tuple[float | None, str]:
    """Zhang et al.'s critical batch size from best steps per batch size: ``(value, how)``
    with ``how`` ``interpolated``, ``beyond`` (no measured batch size is ``overhead`` above
    perfect scaling: it lies above the largest; value None) or ``too few`` (< 2 points)."""
    pts = sorted((b, s) for b, s in zip(batch_sizes, steps) if math.isfinite(s) and s > 0)
    if len(pts) < 2:
        return None, "too few"
    b0, s0 = pts[0]
    level = math.log1p(overhead)
    prev = (math.log(b0), 0.0)
    for b, s in pts[1:]:
        cur = (math.log(b), math.log(s * b / (s0 * b0)))
        if cur[1] >= level:
            if cur[1] == prev[1]:
                return float(b), "interpolated"
            frac = (level - prev[1]) / (cur[1] - prev[1])
            return math.exp(prev[0] + frac * (cur[0] - prev[0])), "interpolated"
        prev = cur
    return None, "beyond"


@dataclass
class NoiseRun:
    """The newest stored ``tuner noise-scale`` run of one batch size."""

    batch_size: int
    b_simple: float | None
    steps: int
    method: str
    params_from: str
    runs: int  # runs stored at this batch size


@dataclass
class Definitions:
    """The three critical batch sizes of one spec's curve."""

    b_crit: float | None
    b_crit_ci95: tuple[float, float] | None
    b_overhead: float | None
    b_overhead_how: str
    #: 95 % percentile bootstrap interval; its high end is None where over 2.5 % of the
    #: resamples cross no measured batch size (the CBS may lie above the largest)
    b_overhead_ci95: tuple[float, float | None] | None
    reference_batch_size: int | None
    largest_batch_size: int | None
    noise: list[NoiseRun] = field(default_factory=list)
    overhead: float = OVERHEAD

    def to_json(self) -> dict[str, Any]:
        """The ``cbs`` object of ``tuner curve --format json``."""
        return {
            "b_crit": self.b_crit, "b_crit_ci95": self.b_crit_ci95,
            "b_overhead": {"overhead": self.overhead, "value": self.b_overhead,
                           "how": self.b_overhead_how, "ci95": self.b_overhead_ci95,
                           "reference_batch_size": self.reference_batch_size},
            "b_simple": [vars(n) for n in self.noise],
            "meanings": MEANINGS,
        }

    def line(self) -> str:
        """The three in one line, for the table output."""
        def iv(ci: tuple[float, float | None] | None) -> str:
            if ci is None:
                return ""
            hi = f"{ci[1]:.4g}" if ci[1] is not None else f">{self.largest_batch_size}"
            return f" [{ci[0]:.4g}, {hi}]"

        crit = f"{self.b_crit:.4g}{iv(self.b_crit_ci95)}" if self.b_crit else "no fit"
        if self.b_overhead is not None:
            over = f"{self.b_overhead:.4g}{iv(self.b_overhead_ci95)}"
        elif self.b_overhead_how == "beyond":
            over = f"> {self.largest_batch_size} (never {100 * self.overhead:.0f} % above)"
        else:
            over = "fewer than 2 points"
        simple = "; ".join(
            f"{n.b_simple:.4g} (at B = {n.batch_size}, {n.steps} steps)" if n.b_simple
            else f"undefined (at B = {n.batch_size}: mean |G|^2 not positive)"
            for n in self.noise) or "not measured (tuner noise-scale SPEC -b B)"
        return (f"critical batch size: B_crit (McCandlish fit) = {crit}; B_{100 * self.overhead:.0f}% "
                f"(Zhang et al., {100 * self.overhead:.0f} % over perfect scaling from B = "
                f"{self.reference_batch_size}) = {over}; B_simple (noise scale) = {simple}")


def noise_runs(attrs_by_b: Mapping[int, Mapping[str, Any]]) -> list[NoiseRun]:
    """The newest ``noise_scale`` run stored in each batch size's study attrs."""
    out = []
    for b, attrs in sorted(attrs_by_b.items()):
        runs = attrs.get("noise_scale") or []
        if runs:
            r = runs[-1]
            out.append(NoiseRun(b, r.get("b_simple"), r.get("steps", 0), r.get("method", ""),
                                r.get("params_from", ""), len(runs)))
    return out


def definitions(fit: Fit | None, trials_by_b: dict[int, Sequence[TrialRecord]],
                best_steps: Mapping[int, int], noise: list[NoiseRun], n_boot: int = 1000,
                seed: int = 0, overhead: float = OVERHEAD) -> Definitions:
    """The three definitions from a spec's fit, trials (for the bootstrap: the fit's own
    resamples, made again by ``seed`` when there is no fit), best steps per batch size and
    stored noise-scale runs."""
    bs = sorted(best_steps)
    value, how = overhead_cbs(bs, [best_steps[b] for b in bs], overhead)
    ci = None
    if n_boot and value is not None:
        vals = []
        resamples = fit.resamples if fit is not None and len(fit.resamples) == n_boot else \
            bootstrap_bests(trials_by_b, n_boot, seed)
        for rb, rs in resamples:
            v, h = overhead_cbs(rb, rs, overhead)
            if h != "too few":
                vals.append(math.inf if v is None else v)
        if vals:
            arr = np.array(vals)  # order statistics: no arithmetic with inf
            lo = np.percentile(arr, 2.5, method="lower")
            hi = np.percentile(arr, 97.5, method="higher")
            ci = (float(lo), float(hi) if math.isfinite(hi) else None)
    return Definitions(
        b_crit=fit.b_crit if fit else None,
        b_crit_ci95=tuple(fit.ci95["b_crit"]) if fit and "b_crit" in fit.ci95 else None,
        b_overhead=value, b_overhead_how=how, b_overhead_ci95=ci,
        reference_batch_size=bs[0] if bs else None,
        largest_batch_size=max(trials_by_b) if trials_by_b else None,
        noise=noise, overhead=overhead)
