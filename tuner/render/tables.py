"""Plain-text tables for the terminal."""

from __future__ import annotations

from typing import Any, Sequence

from tuner.analysis.curves import Point
from tuner.analysis.fit import regimes
from tuner.spec import Spec


def render(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Right-aligned columns under a header and a rule."""
    cells = [list(map(str, header))] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def points_table(spec: Spec, points: Sequence[Point]) -> str:
    """The end-of-run table: best steps-to-target and trial outcomes per batch size."""
    params = [p.name for p in spec.space]
    header = ["batch_size", "best_steps", "crossed_in", "trials", "reached", "missed",
              "pruned", "diverged", *(f"best_{n}" for n in params)]
    rows = []
    for p in points:
        crossed = (f"({p.best_steps_after}, {p.best_steps}]" if p.best_steps is not None
                   else None)
        rows.append([p.batch_size, p.best_steps, crossed, p.n_trials, p.n_reached, p.n_missed,
                     p.n_pruned, p.n_diverged, *(p.best_params.get(n) for n in params)])
    t = spec.target
    title = (f"{spec.name}: steps to {t.metric} {'<=' if t.direction == 'minimize' else '>='} "
             f"{t.value:g} ({spec.workload_name}, {spec.optimizer}, seed {spec.seed}); "
             f"crossed_in = the evaluation interval in which the target was first met")
    return title + "\n" + render(header, rows)


Rows = tuple[list[str], list[list[Any]]]


def curve_rows(c: Any) -> Rows:
    """Header and rows of one spec's scaling curve (c: tuner.analysis.curves.Curve)."""
    header = ["batch_size", "best_steps", "best_ci95", "crossed_in", "examples", "regime",
              "learning_rate", "effective_lr", "ms_per_step", "examples_per_s", "time_to_target_s",
              "trials", "reached", "missed", "pruned", "diverged", "good", "tuning"]
    rescored = any(p.best_bound != "exact" or p.n_unknown for p in c.points)
    if rescored:  # re-scored: how exact each best is, and the trials that could not be scored
        header += ["bound", "unscored"]
    rows = []
    for p in c.points:
        ok = p.best_steps is not None
        best = p.best_steps if p.best_bound != "upper" else f"<={p.best_steps}"
        if not ok and p.best_bound == "unknown":
            best = "unknown"
        rows.append([
            p.batch_size, best, ci_text(p.best_ci95) if ok else None,
            f"({p.best_steps_after}, {p.best_steps}]" if ok else None,
            p.best_steps * p.batch_size if ok else None,
            " or ".join(regimes(p.batch_size, c.fit)) if ok and c.fit else None,
            c.learning_rate(p) if ok else None, c.effective_lr(p) if ok else None,
            1e3 * p.step_seconds if p.step_seconds is not None else None,
            p.examples_per_second, p.time_to_target, p.n_trials, p.n_reached, p.n_missed, p.n_pruned, p.n_diverged,
            p.n_good if ok else None, p.tuning if ok else None,
            *((p.best_bound, p.n_unknown) if rescored else ())])
    return header, rows


def fit_line(c: Any) -> str:
    """The fitted model in one line, with the bootstrap's usable resamples and, when the fit
    is unreliable, why."""
    f = c.fit
    if f is None:
        why = c.no_fit_because or "needs >= 3 batch sizes that reached the target"
        return f"{c.name}: no fit ({why})"
    ci = f.ci95
    worst = max((abs(r) for r in f.residuals.values()), default=0.0)

    def iv(k: str) -> str:
        return f" [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else ""

    dropped = sum(f.boot_dropped.values())
    boot = f"95 % bootstrap, {f.n_boot} of {f.n_boot_requested} resamples usable"
    if dropped:
        boot += " (dropped: " + ", ".join(f"{n} {why}" for why, n in f.boot_dropped.items()) + ")"
    line = (f"{c.name}: S(B) = S_min (1 + B_noise/B): S_min = {f.s_min:.4g}{iv('s_min')}, "
            f"E_min = {f.e_min:.4g}{iv('e_min')}, B_crit = {f.b_crit:.4g}{iv('b_crit')} "
            f"({boot}); max |log2 residual| = {worst:.3f}")
    if c.unreliable_because:
        line += "; UNRELIABLE: " + "; ".join(c.unreliable_because)
    if c.under_tuned:
        without = f"without the under-tuned B = {', '.join(map(str, c.under_tuned))}: "
        g = c.fit_tuned
        if g is None:
            line += f"; {without}no fit ({c.fit_tuned_because})"
        else:
            gi = g.ci95
            span = (f" [{gi['b_crit'][0]:.4g}, {gi['b_crit'][1]:.4g}]" if "b_crit" in gi else "")
            line += (f"; {without}S_min = {g.s_min:.4g}, B_crit = {g.b_crit:.4g}{span}, "
                     f"{g.n_points} points")
    return line


def ci_text(ci: tuple[float, float] | None) -> str | None:
    """``[lo, hi]`` of an interval, or None."""
    return None if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def edge_rows(findings: Sequence[Any]) -> Rows:
    """Header and rows of edge findings."""
    header = ["batch_size", "param", "best_value", "position", "edge", "verdict", "top_k",
              "top_k_at_edge", "tuning", "suggestion"]
    return header, [[f.batch_size, f.param, f.value,
                     None if f.position is None else f"{f.position:.3f}", f.edge, f.verdict,
                     f.top_k, f.top_k_at_edge, f.tuning, f.suggestion] for f in findings]


def sensitivity_rows(items: Sequence[Any]) -> Rows:
    """Header and rows of sensitivity summaries (one row per batch size)."""
    params = sorted({k for s in items for k in s.good_region} |
                    {k for s in items for k in (s.importances or {})})
    header = ["batch_size", "best_steps", "best_ci95", "reached", "missed", "pruned",
              "diverged", "good", "unknown", "feasible", "tuning",
              *(f"good_{p}" for p in params), "importance_trials",
              *(f"importance_{p}" for p in params)]
    rows = []
    for s in items:
        c = s.counts
        region = [f"[{s.good_region[p][0]:.3g}, {s.good_region[p][1]:.3g}]"
                  if p in s.good_region else None for p in params]
        imp = [(s.importances or {}).get(p) for p in params]
        a = s.adequacy
        feasible = a.feasible if a is not None else None
        rows.append([s.batch_size, s.best_steps, ci_text(a.ci95) if a else None, c["reached"],
                     c["missed"], c["pruned"], c["diverged"], s.n_good, s.n_unknown,
                     None if feasible is None else f"{feasible:.0%}", a.status if a else None,
                     *region, s.importance_trials or None, *imp])
    return header, rows


def to_csv(header: Sequence[str], rows: Sequence[Sequence[Any]], prefix: Sequence[Any] = ()
           ) -> list[list[Any]]:
    """Rows for csv.writer, each led by ``prefix`` (e.g. the spec name)."""
    return [[*prefix, *("" if v is None else v for v in r)] for r in rows]


def series_rows(sc: Any) -> Rows:
    """A series (:class:`tuner.analysis.series.SeriesCurve`): one row per member."""
    header = [sc.key, "spec", "b_crit", "b_crit_ci95", "s_min", "s_min_ci95", "points",
              "reliable"]
    rows = [[r.value, r.spec, r.b_crit, ci_text(r.b_crit_ci95), r.s_min, ci_text(r.s_min_ci95),
             r.n_points, "yes" if r.reliable else "no"] for r in sc.rows]
    return header, rows


def quality_rows(points: Sequence[Any]) -> Rows:
    """Solution quality per batch size (:class:`tuner.analysis.quality.QualityPoint`)."""
    header = ["batch_size", "budget_steps", "budget_examples", "best_value", "best_trial",
              "at_step", "trials", "stopped_short", "bound"]
    rows = [[p.batch_size, p.cap, p.cap_examples, p.best_value, p.best_trial, p.at_step,
             p.n_trials, p.n_short, p.bound] for p in points]
    return header, rows


def confirm_rows(results: Sequence[Any]) -> Rows:
    """``tuner confirm``: one row per batch size and configuration
    (:class:`tuner.analysis.confirm.ConfigResult`)."""
    header = ["batch_size", "config", "trial", "original_steps", "seeds", "reached", "mean",
              "sd", "mean_ci95", "median_all", "optimism", "val_at_target", "test_at_target",
              "sharpness"]
    rows = [[r.batch_size, r.config, r.trial, r.original_steps, r.n_seeds, r.n_reached, r.mean,
             r.sd, ci_text(r.ci95), r.median_all, r.optimism, r.val, r.test, r.sharpness]
            for r in results]
    return header, rows
