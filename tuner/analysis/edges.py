"""Edge check: is a batch size's best trial (or its near-best trials) at a search-space edge?

A best point near a boundary means the optimum may lie outside the range (Google's tuning
playbook calls it "suspicious"). The playbook's exception: when every trial beyond the best one,
toward that edge, diverged, the edge marks the stability limit; we report "unstable beyond edge"
instead of "expand the range", and it does not fail the check.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuner.analysis.curves import best
from tuner.analysis.records import BatchStudy
from tuner.core.space import PARAM_BOUNDS, Param

#: Near-best trials "cluster" at an edge when at least this share of them (and >= 3) sit there.
CLUSTER_SHARE = 2 / 3


@dataclass
class EdgeFinding:
    """One (batch size, parameter) verdict."""

    batch_size: int
    param: str
    value: float | None
    position: float | None  # 0 = low edge, 1 = high edge (log space for log params)
    edge: str | None  # "low" | "high" | None
    # "ok" | "at edge" | "unstable beyond edge" | "no reached trial" | "not in best trial"
    verdict: str
    top_k: int = 0  # trials within top_frac of the best steps
    top_k_at_edge: str | None = None  # "low"/"high" when most near-best trials sit at that edge
    suggestion: str = ""
    tuning: str | None = None  # the batch size's adequacy (tuner.analysis.adequacy), if assessed

    @property
    def failing(self) -> bool:
        """Whether this finding makes ``tuner edges`` exit 1."""
        return self.verdict == "at edge"


def edge_of(position: float, margin: float) -> str | None:
    """``low``/``high`` when ``position`` is within ``margin`` of an edge."""
    if position <= margin:
        return "low"
    if position >= 1.0 - margin:
        return "high"
    return None


def suggest_bounds(p: Param, edge: str) -> str:
    """New bounds that extend the range past ``edge`` (x10 on log scales, by the width else)."""
    assert p.low is not None and p.high is not None
    lo_lim, hi_lim, lo_in, hi_in = PARAM_BOUNDS.get(p.name, (float("-inf"), float("inf"),
                                                             True, True))
    if edge == "low":
        new = p.low / 10 if p.log else p.low - (p.high - p.low)
        if new < lo_lim or (new == lo_lim and not lo_in):  # past the parameter's own limit
            new = lo_lim if lo_in else (p.low + lo_lim) / 2
        if new >= p.low:
            return f"low = {p.low:g} is already {p.name}'s limit"
        return f"low = {new:g} (was {p.low:g})"
    new = p.high * 10 if p.log else p.high + (p.high - p.low)
    if new > hi_lim or (new == hi_lim and not hi_in):
        new = hi_lim if hi_in else (p.high + hi_lim) / 2
    if new <= p.high:
        return f"high = {p.high:g} is already {p.name}'s limit"
    return f"high = {new:g} (was {p.high:g})"


def check_study(study: BatchStudy, margin: float = 0.05, top_frac: float = 0.10
                ) -> list[EdgeFinding]:
    """Findings for every searched numeric parameter of one batch-size study."""
    b = best(study.trials)
    out = []
    numeric = {n: p for n, p in study.search_space.items() if p.choices is None}
    if b is None:
        return [EdgeFinding(study.batch_size, n, None, None, None, "no reached trial")
                for n in numeric]
    assert b.steps_to_target is not None
    top = [t for t in study.trials if t.outcome == "reached"
           and t.steps_to_target <= (1 + top_frac) * b.steps_to_target]
    finished = [t for t in study.trials if t.outcome in ("reached", "missed", "diverged")]
    for name, p in numeric.items():
        if name not in b.params:  # a trial stored without this param (not by `tuner run`)
            out.append(EdgeFinding(study.batch_size, name, None, None, None, "not in best trial"))
            continue
        value = b.params[name]
        pos = p.position(value)
        assert pos is not None
        edge = edge_of(pos, margin)
        f = EdgeFinding(study.batch_size, name, value, pos, edge, "ok", top_k=len(top))
        top_edges = [edge_of(p.position(t.params[name]), margin)  # type: ignore[arg-type]
                     for t in top if name in t.params]
        for side in ("low", "high"):
            if len(top) >= 3 and top_edges.count(side) >= CLUSTER_SHARE * len(top):
                f.top_k_at_edge = side
        if edge is not None:
            beyond = [t for t in finished if name in t.params and (
                p.position(t.params[name]) > pos if edge == "high"  # type: ignore[operator]
                else p.position(t.params[name]) < pos)]  # type: ignore[operator]
            if beyond and all(t.outcome == "diverged" for t in beyond):
                f.verdict = "unstable beyond edge"
                f.suggestion = (f"all {len(beyond)} trial(s) past the best toward the {edge} "
                                "edge diverged; the range is wide enough")
            else:
                f.verdict = "at edge"
                f.suggestion = suggest_bounds(p, edge)
        elif f.top_k_at_edge:
            f.suggestion = (f"most of the {len(top)} trials within {top_frac:.0%} of the best sit at "
                            f"the {f.top_k_at_edge} edge; consider {suggest_bounds(p, f.top_k_at_edge)}")
        out.append(f)
    return out
