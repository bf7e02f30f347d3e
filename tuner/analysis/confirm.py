"""What ``tuner confirm`` found: per batch size and configuration, the steps-to-target of fresh
seeds (mean, spread, a 95 % interval of the mean), how optimistic the original best-of-N was,
and, where the target was reached, the validation and test metric and the sharpness; then
whether sharpness or test error depends on the batch size at equal validation error.

Plain functions over the records of the confirmation studies (spec ``NAME.confirm``; their
attr ``confirms`` lists the configurations, :mod:`tuner.run.confirm`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from tuner.analysis.records import BatchStudy, SpecStudies, TrialRecord


@dataclass
class ConfigResult:
    """One configuration re-run with fresh seeds."""

    batch_size: int
    config: int  # 0: the original best
    trial: int  # the original trial's number
    original_steps: int
    n_seeds: int  # finished seeds
    n_reached: int
    steps: list[int] = field(default_factory=list)  # of the seeds that reached the target
    mean: float | None = None  # over the seeds that reached
    sd: float | None = None
    ci95: tuple[float, float] | None = None  # Student-t interval of the mean
    median_all: float | None = None  # over every seed, a miss counted as infinite
    optimism: float | None = None  # mean / original steps (> 1: the original was lucky)
    val: float | None = None  # mean validation metric where the target was reached
    test: float | None = None  # mean test metric there (None: no test split)
    sharpness: float | None = None  # mean top Hessian eigenvalue there
    sharpness_values: list[float] = field(default_factory=list)
    test_values: list[float] = field(default_factory=list)
    #: Loss-landscape slices where the first seed of the configuration reached the target
    #: (tuner.train.landscape; measured for the best configuration only)
    landscape: dict[str, Any] | None = field(default=None, repr=False)


def _t975(df: int) -> float:
    from scipy.stats import t  # heavy: scipy, only when needed

    return float(t.ppf(0.975, df))


def _at(t: TrialRecord, metric: str) -> float | None:
    """The metric at the trial's steps-to-target, from its stored curve."""
    c = t.curve or {}
    vals = c.get("metrics", {}).get(metric)
    if not vals or t.steps_to_target not in c.get("steps", []):
        return None
    return vals[c["steps"].index(t.steps_to_target)]


def config_results(st: BatchStudy, metric: str) -> list[ConfigResult]:
    """Every confirmed configuration of one batch size's confirmation study."""
    conf = st.attrs.get("confirms", {})
    base, width = conf.get("slot_base", 0), conf.get("max_seeds", 1)
    out = []
    for k, c in enumerate(conf.get("configs", [])):
        mine = [t for t in st.trials if t.slot is not None and base + k * width <= t.slot
                < base + (k + 1) * width and t.finished]
        if not mine:
            continue
        r = ConfigResult(st.batch_size, k, c["trial"], c["steps"], len(mine),
                         sum(t.outcome == "reached" for t in mine))
        reached = [t for t in mine if t.outcome == "reached"]
        r.steps = sorted(int(t.steps_to_target) for t in reached if t.steps_to_target)
        if r.steps:
            r.mean = statistics.fmean(r.steps)
            r.optimism = r.mean / c["steps"] if c["steps"] else None
        if len(r.steps) >= 2:
            r.sd = statistics.stdev(r.steps)
            h = _t975(len(r.steps) - 1) * r.sd / math.sqrt(len(r.steps))
            r.ci95 = (r.mean - h, r.mean + h)
        everything = sorted([float(s) for s in r.steps] + [math.inf] * (len(mine) - len(r.steps)))
        med = statistics.median(everything)
        r.median_all = med if math.isfinite(med) else None
        vals = [v for v in (_at(t, metric) for t in reached) if v is not None]
        r.val = statistics.fmean(vals) if vals else None
        at = [t.at_target for t in reached if t.at_target]
        r.sharpness_values = [a["sharpness"] for a in at if a.get("sharpness") is not None
                              and math.isfinite(a["sharpness"])]
        r.test_values = [a["test"][metric] for a in at if a.get("test") and metric in a["test"]]
        r.sharpness = statistics.fmean(r.sharpness_values) if r.sharpness_values else None
        r.landscape = next((a["landscape"] for a in at if a.get("landscape")), None)
        r.test = statistics.fmean(r.test_values) if r.test_values else None
        out.append(r)
    return out


def confirmation(s: SpecStudies) -> list[ConfigResult]:
    """Every configuration of every batch size of a ``NAME.confirm`` spec's studies."""
    metric = s.target["metric"]
    return [r for st in s.studies for r in config_results(st, metric)]


def dependence(results: Sequence[ConfigResult], what: str) -> str:
    """In words, with the numbers: whether ``what`` (``sharpness`` or ``test``) depends on the
    batch size, over every confirmation trial that reached the target (Spearman's rank
    correlation with B, two-sided p-value at 0.05). The trials are not independent draws of the
    effect of B (each batch size has its own tuned configuration, and its seeds share it), so
    the p-value is a guide, and the text says so."""
    from scipy.stats import spearmanr  # heavy: scipy, only when needed

    pairs = [(r.batch_size, v) for r in results
             for v in (r.sharpness_values if what == "sharpness" else r.test_values)]
    label = "sharpness (top Hessian eigenvalue)" if what == "sharpness" else "test metric"
    if not pairs and what == "test" and any(r.n_reached for r in results):
        return ("test metric: not measured (the workload has no test split, e.g. digits, or "
                "its test pass logs no metric named like the target's)")
    if len({b for b, _ in pairs}) < 2 or len(pairs) < 4:
        return f"{label}: too few measurements across batch sizes to say ({len(pairs)})"
    res = spearmanr([b for b, _ in pairs], [v for _, v in pairs])
    rho, p = float(res.statistic), float(res.pvalue)
    by_b: dict[int, list[float]] = {}
    for b, v in pairs:
        by_b.setdefault(b, []).append(v)
    means = ", ".join(f"B={b}: {statistics.fmean(v):.4g}" for b, v in sorted(by_b.items()))
    verdict = (f"{'rises' if rho > 0 else 'falls'} with the batch size" if p < 0.05 else
               "shows no evidence of depending on the batch size")
    return (f"at the step the target was reached (equal validation metric), the {label} "
            f"{verdict} (Spearman rho = {rho:.2f}, p = {p:.2g}, {len(pairs)} trials; means "
            f"{means}; each B's configuration differs, and seeds of one configuration are not "
            "independent draws, so p is indicative)")


def confirmation_json(s: SpecStudies, results: Sequence[ConfigResult]) -> dict[str, Any]:
    """``tuner confirm --format json``."""
    return {"spec": s.name, "target": s.target,
            "configs": [{k: v for k, v in r.__dict__.items() if k != "landscape"}
                        | {"has_landscape": r.landscape is not None} for r in results],
            "sharpness": dependence(results, "sharpness"), "test": dependence(results, "test")}
