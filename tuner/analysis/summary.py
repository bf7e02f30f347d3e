"""Whole-spec summaries as plain data: curve JSON (docs/DESIGN.md's contract) and the verdict."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from tuner.analysis.adequacy import UNDER_TUNED, Adequacy, Rule, assess
from tuner.analysis.cbs import definitions, noise_runs
from tuner.analysis.curves import Curve, best, curve
from tuner.analysis.edges import EdgeFinding, check_study
from tuner.analysis.fit import best_steps_per_batch, regime, regimes
from tuner.analysis.records import SpecStudies

#: The default adequacy rule, in words.
RULE_TEXT = Rule().text()

#: A best trial that used more than this share of its budget suggests the budget is too small.
BUDGET_SHARE = 0.9


def adequacy(s: SpecStudies, rule: Rule = Rule(), run_cmd: str = "tuner run SPEC"
             ) -> list[Adequacy]:
    """The tuning-adequacy verdict of every batch size of a spec (``run_cmd``: how the
    advice's command starts)."""
    return [assess(st.batch_size, st.trials, st.search_space, rule, run_cmd)
            for st in s.studies]


def spec_curve(s: SpecStudies, n_boot: int = 1000, run_cmd: str = "tuner run SPEC") -> Curve:
    """The scaling curve of one spec's stored studies, each point with its adequacy."""
    trials_by_b = {st.batch_size: st.trials for st in s.studies}
    c = curve(s.name, s.target, s.attrs.get("optimizer", ""), trials_by_b,
              s.attrs.get("fixed_params", {}), n_boot=n_boot, seed=s.seed,
              adequacy={a.batch_size: a for a in adequacy(s, run_cmd=run_cmd)})
    by_b = {st.batch_size: st for st in s.studies}
    for p in c.points:
        st = by_b[p.batch_size]
        p.n_duplicates = st.n_duplicates
        p.best_bound = st.attrs.get("rescored", {}).get("bound", "exact")
        if p.best_bound == "none":  # re-scored: nothing met the goal, and nothing could have
            p.best_bound = "exact"
    c.n_duplicates = s.n_duplicates
    c.series = s.attrs.get("series")
    c.cbs = definitions(c.fit, trials_by_b, best_steps_per_batch(trials_by_b),
                        noise_runs({st.batch_size: st.attrs for st in s.studies}),
                        n_boot=n_boot, seed=s.seed)
    return c


def curve_json(c: Curve) -> dict[str, Any]:
    """One spec's object of ``tuner curve --format json``."""
    points = []
    for p in c.points:
        d = {k: v for k, v in asdict(p).items()}
        d["examples_to_target"] = p.best_steps * p.batch_size if p.best_steps else None
        d["learning_rate"] = c.learning_rate(p) if p.best_steps else None
        d["effective_learning_rate"] = c.effective_lr(p) if p.best_steps else None
        d["regime"] = regime(p.batch_size, c.fit) if c.fit and p.best_steps else None
        d["regimes"] = regimes(p.batch_size, c.fit) if c.fit and p.best_steps else None
        points.append(d)
    return {"spec": c.name, "target": c.target, **({"series": c.series} if c.series else {}),
            "points": points,
            "fit": c.fit.to_json() if c.fit else None,
            "tuning_rule": RULE_TEXT, "under_tuned": c.under_tuned,
            "fit_without_under_tuned": c.fit_tuned.to_json() if c.fit_tuned else None,
            "fit_without_under_tuned_because": c.fit_tuned_because,
            "reliable": c.reliable,
            "unreliable_because": "; ".join(c.unreliable_because) or None,
            "duplicate_trials_set_aside": c.n_duplicates,
            "time_optimal": time_optimal_json(c),
            "cbs": c.cbs.to_json() if c.cbs else None}


def time_optimal_json(c: Curve) -> dict[str, Any] | None:
    """The time-optimal batch size of a curve (``tuner.analysis.throughput``), or None."""
    p = c.time_optimal()
    if p is None:
        return None
    return {"batch_size": p.batch_size, "seconds": p.time_to_target, "device": p.device,
            "step_seconds": p.step_seconds, "basis": p.step_time_basis}


def time_optimal_line(c: Curve) -> str | None:
    """In words: the batch size with the least time to target, or None."""
    p = c.time_optimal()
    if p is None:
        return None
    basis = {"steady": "", "shared": " (step times of trials trained several at once, "
             "[trainer] trials_at_once: one trial alone steps faster)"}.get(
        p.step_time_basis, " (step times include trial set-up: studies stored before "
        "step_seconds)")
    return (f"time-optimal batch size: B = {p.batch_size} ({p.time_to_target:.3g} s to target "
            f"= {p.best_steps} steps x {1e3 * (p.step_seconds or 0):.3g} ms/step on "
            f"{p.device}, the median step time of its trials){basis}")


def edge_findings(s: SpecStudies, margin: float = 0.05, top_frac: float = 0.10,
                  tuning: Sequence[Adequacy] = ()) -> list[EdgeFinding]:
    """Edge findings for every batch size of a spec, each with its batch size's adequacy
    status when ``tuning`` holds it."""
    status = {a.batch_size: a.status for a in tuning}
    found = [f for st in s.studies for f in check_study(st, margin, top_frac)]
    for f in found:
        f.tuning = status.get(f.batch_size)
    return found


@dataclass
class Verdict:
    """The report's verdict box for one spec."""

    edges_clean: bool
    edge_problems: list[str] = field(default_factory=list)
    budget_tight: list[int] = field(default_factory=list)  # B whose best used > 90 % of budget
    budget_share: float = 0.0
    not_run: list[int] = field(default_factory=list)  # in the spec; no study or finished trial
    not_reached: list[int] = field(default_factory=list)  # finished trials, none reached
    notes: list[str] = field(default_factory=list)
    fit_problems: list[str] = field(default_factory=list)  # Curve.unreliable_because
    #: "B=32: reason; reason (do: advice; advice)" per under-tuned batch size
    under_tuned: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[int]:
        """Batch sizes without a point on the curve (not run, or no trial reached)."""
        return sorted(set(self.not_run) | set(self.not_reached))


def verdict(s: SpecStudies, findings: Sequence[EdgeFinding], c: Curve | None = None
            ) -> Verdict:
    """Edges clean? Budget adequate? Batch sizes not run, or run without reaching the target?
    Is the fit (of ``c``, when given) reliable?"""
    v = Verdict(edges_clean=not any(f.failing for f in findings))
    v.edge_problems = [f"B={f.batch_size}: {f.param} at the {f.edge} edge ({f.suggestion})"
                       for f in findings if f.failing]
    for st in s.studies:
        b = best(st.trials)
        if b is not None and st.max_steps and b.steps_to_target > BUDGET_SHARE * st.max_steps:
            v.budget_tight.append(st.batch_size)
    v.budget_share = len(v.budget_tight) / max(1, len(s.studies))
    try:
        wanted = tomllib.loads(s.attrs.get("spec_text", "")).get("batch_sizes", [])
    except tomllib.TOMLDecodeError:
        wanted = []
    ran = {st.batch_size for st in s.studies
           if any(t.finished for t in st.trials)}
    v.not_run = sorted(set(wanted) - ran)
    v.not_reached = sorted(st.batch_size for st in s.studies
                           if st.batch_size in ran and best(st.trials) is None)
    if c is not None:
        v.fit_problems = list(c.unreliable_because)
        v.under_tuned = [under_tuned_line(p.batch_size, p.tuning_reasons, p.tuning_advice)
                         for p in c.points if p.tuning == UNDER_TUNED]
    return v


def under_tuned_line(batch_size: int, reasons: Sequence[str], advice: Sequence[str]) -> str:
    """One under-tuned batch size in one line: why, and what to do."""
    return (f"under-tuned at B = {batch_size}: " + "; ".join(reasons)
            + (" (do: " + "; ".join(advice) + ")" if advice else ""))
