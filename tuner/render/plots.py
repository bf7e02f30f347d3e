"""Figures as PNG bytes (matplotlib, no display): scaling curves, learning rates, wall time,
sensitivity scatters and per-parameter axis plots."""

from __future__ import annotations

import io
import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from tuner.analysis.curves import Curve, Point, best  # noqa: E402
from tuner.analysis.families import Comparison, Side  # noqa: E402
from tuner.analysis.fit import MAXIMAL_ABOVE, PERFECT_BELOW  # noqa: E402
from tuner.analysis.profiles import TAU_MAX, Profile  # noqa: E402
from tuner.analysis.records import BatchStudy  # noqa: E402
from tuner.analysis.quality import QualityPoint  # noqa: E402
from tuner.analysis.series import SeriesCurve  # noqa: E402

MARKERS = {"reached": ("o", "tab:blue"), "missed": ("s", "tab:gray"),
           "diverged": ("x", "tab:red"), "pruned": (".", "tab:orange")}


def _png(fig: plt.Figure, tight: bool = True) -> bytes:
    """The figure as PNG bytes; ``tight`` crops to what is drawn (a second layout pass: only
    for figures with legends outside the axes; the others call ``tight_layout``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buf.getvalue()


def _plain_log_labels(axis: matplotlib.axis.Axis) -> None:
    """Major ticks of a log axis labelled 0.001, 1, 1e+04 (``%g``) instead of mathtext
    powers of ten, whose layout costs most of a small figure's drawing time."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _pow2_label(v: float, _: object = None) -> str:
    """8, 1024, 16K, 1M, 2^40: readable labels for powers of two."""
    if v < 1:
        return f"{v:g}"
    if v >= 2 ** 14:
        for div, suffix in ((2 ** 30, "G"), (2 ** 20, "M"), (2 ** 10, "K")):
            if v >= div and v % div == 0:
                return f"{v / div:.0f}{suffix}"
    return f"{v:.0f}"


def _log2_axis(axis: matplotlib.axis.Axis) -> None:
    """Log base-2 scale, at most ~10 labelled powers of two, labelled 8, 1024, 16K, 1M."""
    lo, hi = axis.get_view_interval()
    span = max(1, math.ceil(math.log2(max(hi, 2) / max(lo, 1e-9))))
    axis.set_major_locator(LogLocator(base=2 ** max(1, math.ceil(span / 10)), numticks=12))
    axis.set_major_formatter(FuncFormatter(_pow2_label))
    axis.set_minor_formatter(NullFormatter())


def _points_with_intervals(ax: plt.Axes, pts: Sequence[Point], color: str) -> None:
    """Best steps with their 95 % bootstrap interval as error bars; an interval unbounded
    below (low end 0) is drawn to best/4 and ends in a down arrow. Under-tuned points hollow."""
    for p in pts:
        assert p.best_steps is not None
        ci = p.best_ci95
        yerr = None
        if ci is not None:
            low = ci[0] if ci[0] > 0 else p.best_steps / 4
            yerr = [[p.best_steps - low], [max(0.0, ci[1] - p.best_steps)]]
            if ci[0] <= 0:
                ax.plot([p.batch_size], [low], "v", color=color, ms=5)
        under = p.tuning == "under-tuned"
        ax.errorbar([p.batch_size], [p.best_steps], yerr=yerr, fmt="o", color=color,
                    mfc="white" if under else color, capsize=3, elinewidth=1)


def scaling(curves: Sequence[Curve]) -> bytes:
    """Steps-to-target and examples-to-target vs batch size, log2-log2, several specs."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, c in enumerate(curves):
        pts = c.reached()
        if not pts:
            continue
        color = f"C{i}"
        bs = [p.batch_size for p in pts]
        steps = [p.best_steps for p in pts]
        ax.plot(bs, steps, "-", color=color, label=c.name)
        _points_with_intervals(ax, pts, color)
        ax2.plot(bs, [s * b for s, b in zip(steps, bs)], "o-", color=color, label=c.name)
        b0, s0 = bs[0], steps[0]
        ax.plot([b0, bs[-1]], [s0, s0 * b0 / bs[-1]], ":", color=color, alpha=0.7,
                label=f"{c.name}: perfect scaling from B={b0}")
        if c.fit is not None:
            grid = [bs[0] * (bs[-1] / bs[0]) ** (k / 100) for k in range(101)]
            ax.plot(grid, [c.fit.steps(b) for b in grid], "--", color=color, alpha=0.6,
                    label=f"{c.name}: fit, B_crit = {c.fit.b_crit:.0f}")
            ax2.plot(grid, [c.fit.steps(b) * b for b in grid], "--", color=color, alpha=0.6)
            if len(curves) == 1:  # regimes of a single curve (several would clutter the plot)
                lo, hi = PERFECT_BELOW * c.fit.b_crit, MAXIMAL_ABOVE * c.fit.b_crit
                ax.axvspan(bs[0] / 1.2, max(min(lo, bs[-1] * 1.2), bs[0] / 1.2),
                           color="green", alpha=0.06, label="perfect scaling")
                if hi < bs[-1] * 1.2:
                    ax.axvspan(max(hi, bs[0] / 1.2), bs[-1] * 1.2, color="red", alpha=0.06,
                               label="maximal data parallelism")
    t = curves[0].target if curves else {}
    goal = f"{t.get('metric', '')} {'<=' if t.get('direction') == 'minimize' else '>='} " \
           f"{t.get('value', '')}"
    for a, ylabel in ((ax, "steps to target"), (ax2, "examples to target (steps x B)")):
        a.set_xscale("log", base=2)
        a.set_yscale("log", base=2)
        _log2_axis(a.xaxis)
        _log2_axis(a.yaxis)
        a.set_xlabel("batch size B")
        a.set_ylabel(ylabel)
        a.grid(True, which="major", alpha=0.3)
    ax.set_title(f"Steps to {goal}\n(bars: 95 % bootstrap interval of the best; "
                 "hollow: under-tuned)", fontsize=9)
    ax2.set_title("Examples to target")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    return _png(fig)


def learning_rates(curves: Sequence[Curve]) -> bytes:
    """Best learning rate and effective learning rate vs B, with linear and sqrt guides."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for i, c in enumerate(curves):
        pts = [p for p in c.reached() if c.learning_rate(p) is not None]
        if not pts:
            continue
        bs = [p.batch_size for p in pts]
        lrs = [c.learning_rate(p) for p in pts]
        ax.plot(bs, lrs, "o-", color=f"C{i}", label=f"{c.name}: learning rate")
        eff = [c.effective_lr(p) for p in pts]
        if all(e is not None for e in eff):
            ax.plot(bs, eff, "s--", color=f"C{i}", alpha=0.7,
                    label=f"{c.name}: effective rate lr/(1-momentum)")
        b0, l0 = bs[0], lrs[0]
        ax.plot(bs, [l0 * b / b0 for b in bs], ":", color="black", alpha=0.5,
                label="linear scaling" if i == 0 else None)
        ax.plot(bs, [l0 * math.sqrt(b / b0) for b in bs], "-.", color="gray", alpha=0.5,
                label="square-root scaling" if i == 0 else None)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _log2_axis(ax.xaxis)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("learning rate of the best trial")
    ax.set_title("Optimal learning rate vs batch size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    return _png(fig)


def time_to_target(curves: Sequence[Curve]) -> bytes | None:
    """Left: time to target (best steps x the median steady-state step time) vs B, the
    time-optimal B marked. Right: throughput (examples per second) vs B. None if no point has
    a step time (closed-form workloads)."""
    if not any(p.time_to_target for c in curves for p in c.points):
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    for i, c in enumerate(curves):
        pts = [p for p in c.points if p.time_to_target]
        ax.plot([p.batch_size for p in pts], [p.time_to_target for p in pts], "o-",
                color=f"C{i}", label=f"{c.name} ({pts[0].device})" if pts else c.name)
        best_p = c.time_optimal()
        if best_p is not None:
            ax.plot([best_p.batch_size], [best_p.time_to_target], "*", ms=14, color=f"C{i}")
        tp = [p for p in c.points if p.examples_per_second]
        ax2.plot([p.batch_size for p in tp], [p.examples_per_second for p in tp], "s-",
                 color=f"C{i}", label=c.name)
    for a, ylabel in ((ax, "seconds to target"), (ax2, "training examples per second")):
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        _log2_axis(a.xaxis)
        a.set_xlabel("batch size B")
        a.set_ylabel(ylabel)
        a.grid(True, alpha=0.3)
    ax.set_title("Time to target = best steps x median step time\n(star: the time-optimal "
                 "batch size)", fontsize=9)
    ax2.set_title("Throughput (steady state, evaluation excluded)", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def quality(results: Sequence[tuple[str, str, Sequence[QualityPoint]]], budget: str) -> bytes:
    """The best metric within a budget against B, one line per spec (hollow: a bound)."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for i, (name, metric, pts) in enumerate(results):
        got = [p for p in pts if p.best_value is not None]
        ax.plot([p.batch_size for p in got], [p.best_value for p in got], "-", color=f"C{i}",
                alpha=0.6, label=f"{name} ({metric})")
        for p in got:
            ax.plot([p.batch_size], [p.best_value], "o", color=f"C{i}",
                    mfc=f"C{i}" if p.bound == "exact" else "white")
    ax.set_xscale("log", base=2)
    _log2_axis(ax.xaxis)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("best validation metric within the budget")
    ax.set_title(f"Solution quality within {budget}\n(hollow: a bound; trials stopped early)",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def landscapes(items: Sequence[tuple[int, dict]]) -> bytes:
    """Left: the 1D filter-normalised loss slices, one line per batch size. Then one 2D contour
    panel per batch size (Li et al. 2018), at the step the target was reached."""
    n = len(items)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 3.8), squeeze=False)
    ax = axes[0][0]
    for i, (b, ls) in enumerate(items):
        ax.plot(ls["alphas"], ls["loss_1d"], "-", color=f"C{i}", label=f"B = {b}")
    ax.set_xlabel("step along a filter-normalised direction")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title("1D slices at the target", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    for i, (b, ls) in enumerate(items):
        a = axes[0][i + 1]
        grid = ls["alphas_2d"]
        z = [[math.log10(max(v, 1e-12)) for v in row] for row in ls["loss_2d"]]
        cs = a.contour(grid, grid, z, levels=12, cmap="viridis")
        a.clabel(cs, fontsize=6, fmt="%.1f")
        a.plot([0], [0], "k+")
        a.set_title(f"B = {b}: log10 training loss", fontsize=9)
        a.set_aspect("equal")
    return _png(fig)


def series(groups: Sequence[SeriesCurve]) -> bytes:
    """Left: B_crit against the series value (its 95 % bootstrap interval as bars; hollow:
    the member's fit is unreliable). Right: S_min the same way."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    for i, sc in enumerate(groups):
        for a, attr in ((ax, "b_crit"), (ax2, "s_min")):
            rows = [r for r in sc.rows if getattr(r, attr) and isinstance(r.value, (int, float))]
            if not rows:
                continue
            xs = [float(r.value) for r in rows]
            ys = [getattr(r, attr) for r in rows]
            a.plot(xs, ys, "-", color=f"C{i}", alpha=0.5)
            for r, x, y in zip(rows, xs, ys):
                ci = getattr(r, attr + "_ci95")
                err = [[y - ci[0]], [ci[1] - y]] if ci else None
                a.errorbar([x], [y], yerr=err, fmt="o", color=f"C{i}", capsize=3,
                           mfc=f"C{i}" if r.reliable else "white",
                           label=f"{sc.name} ({sc.target})" if r is rows[0] else None)
    for a, ylabel, attr in ((ax, "critical batch size B_crit", "b_crit"),
                            (ax2, "S_min (steps)", "s_min")):
        vals = [getattr(r, attr) for sc in groups for r in sc.rows if getattr(r, attr)]
        a.set_xscale("log")
        a.set_yscale("log")
        if vals:  # an interval spanning decades (a poorly fitted member) runs off the axis
            a.set_ylim(min(vals) / 30, max(vals) * 30)
        a.set_xlabel(groups[0].key if groups else "series value")
        a.set_ylabel(ylabel)
        a.grid(True, which="major", alpha=0.3)
    ax.set_title("B_crit against the series value\n(bars: 95 % bootstrap interval, cut at "
                 "30x; hollow: unreliable fit)", fontsize=9)
    ax2.set_title("S_min against the series value", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return _png(fig)


def profiles(prof: Profile, colors: dict[str, str] | None = None) -> bytes:
    """Left: each spec's performance profile, the fraction of batch sizes within tau of the
    fewest steps, tau from 1 to TAU_MAX. Right: each spec's ratio to the fewest steps per batch
    size (a spec that never reached the target at a B drawn at the top, as x)."""
    colors = colors or {n: f"C{i}" for i, n in enumerate(prof.names)}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    taus = sorted({1.0, TAU_MAX, *(r for rs in prof.ratios.values() for r in rs.values()
                                   if 1.0 <= r <= TAU_MAX)})
    top = TAU_MAX * 1.15
    for n in prof.names:
        ax.step(taus, [prof.fraction(n, t) for t in taus], where="post", color=colors[n],
                label=f"{n} (score {prof.score(n):.2f})")
        bs = prof.batch_sizes
        rs = [prof.ratios[n][b] for b in bs]
        ax2.plot([b for b, r in zip(bs, rs) if math.isfinite(r)],
                 [r for r in rs if math.isfinite(r)], "o-", color=colors[n], label=n)
        ax2.plot([b for b, r in zip(bs, rs) if not math.isfinite(r)],
                 [top for r in rs if not math.isfinite(r)], "x", color=colors[n], ms=9)
    ax.set_xlim(1.0, TAU_MAX)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau (steps within tau x the fewest)")
    ax.set_ylabel("fraction of batch sizes")
    ax.set_title(f"Performance profiles over {len(prof.batch_sizes)} batch sizes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log", base=2)
    _log2_axis(ax2.xaxis)
    _plain_log_labels(ax2.yaxis)
    ax2.axhline(top, color="#bbb", lw=0.8, ls=":")
    ax2.set_xlabel("batch size B")
    ax2.set_ylabel("best steps / fewest steps at B (x: never reached)")
    ax2.set_title("Steps relative to the best spec at each B")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _family_panel(ax: plt.Axes, sides: Sequence[Side], colors: dict[str, str], title: str
                  ) -> None:
    for s in sides:
        pts = s.curve.reached()
        color = colors.setdefault(s.base, f"C{len(colors)}")
        style = "--" if s.variant else "-"
        ax.plot([p.batch_size for p in pts], [p.best_steps for p in pts], "o" + style,
                color=color, ms=4, label=f"{s.curve.name} ({s.family})")
        if s.curve.fit is not None:
            ax.axvline(s.curve.fit.b_crit, color=color, ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _log2_axis(ax.xaxis)
    _plain_log_labels(ax.yaxis)
    ax.set_xlabel("batch size B (dotted: each fit's B_crit)")
    ax.set_ylabel("steps to target")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def model_vs_measurement(comp: Comparison) -> bytes:
    """The NQM's curves (left) beside the trained ones (right), one colour per optimizer
    family on both sides."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors: dict[str, str] = {}
    _family_panel(ax, comp.model, colors, "Noisy quadratic model (closed form)")
    _family_panel(ax2, comp.measured, colors, f"Measured: {comp.measured_workload}")
    fig.tight_layout()
    return _png(fig)


def _scatter_outcomes(ax: plt.Axes, study: BatchStudy, x: str, y: str | None) -> None:
    for outcome, (marker, color) in MARKERS.items():
        ts = [t for t in study.trials if t.outcome == outcome and x in t.params
              and (y is None or y in t.params)]
        xs = [t.params[x] for t in ts]
        ys = [t.params[y] for t in ts] if y else [
            t.steps_to_target if outcome == "reached" else
            (t.stopped_at_step if outcome == "pruned" else study.max_steps) for t in ts]
        kept = [(a, v) for a, v in zip(xs, ys) if v is not None]  # a trial without its attrs
        if not kept:
            continue
        ax.scatter(*zip(*kept), marker=marker, c=color, s=18, label=outcome, alpha=0.8)
    b = best(study.trials)
    if b is not None and x in b.params and (y is None or y in b.params):
        ax.scatter([b.params[x]], [b.params[y] if y else b.steps_to_target], marker="*",
                   s=160, c="gold", edgecolors="black", label="best", zorder=5)
    p = study.search_space.get(x)
    if p is not None and p.choices is None:
        ax.set_xlim(p.low, p.high)
        if p.log:
            ax.set_xscale("log")
            _plain_log_labels(ax.xaxis)
    ax.set_xlabel(x)


def lr_momentum_scatter(studies: Sequence[BatchStudy]) -> bytes | None:
    """learning_rate x one_minus_momentum, one panel per batch size (None if not searched)."""
    studies = [s for s in studies if {"learning_rate", "one_minus_momentum"} <= set(s.search_space)]
    if not studies:
        return None
    cols = min(4, len(studies))
    rows = math.ceil(len(studies) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, s in zip(axes.flat, studies):
        _scatter_outcomes(ax, s, "learning_rate", "one_minus_momentum")
        p = s.search_space["one_minus_momentum"]
        ax.set_ylim(p.low, p.high)
        if p.log:
            ax.set_yscale("log")
            _plain_log_labels(ax.yaxis)
        ax.set_ylabel("1 - momentum")
        ax.set_title(f"B = {s.batch_size}", fontsize=9)
    for ax in list(axes.flat)[len(studies):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("Learning rate x (1 - momentum): reached / missed / diverged / pruned, best *")
    fig.tight_layout()
    return _png(fig, tight=False)


def axis_plots(study: BatchStudy) -> bytes:
    """Steps to target vs each searched parameter (missed/diverged at the budget)."""
    names = list(study.search_space)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.3), squeeze=False)
    for ax, name in zip(axes.flat, names):
        _scatter_outcomes(ax, study, name, None)
        ax.set_yscale("log", base=2)
        _log2_axis(ax.yaxis)
        ax.set_ylabel("steps (to target / at stop / budget)")
        ax.grid(True, alpha=0.3)
    if axes.flat[0].get_legend_handles_labels()[0]:  # no finished trial: nothing to label
        axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"B = {study.batch_size}: steps vs each parameter")
    fig.tight_layout()
    return _png(fig, tight=False)


def local_cbs(examples: Sequence[int], cbs: Sequence[int], b0: int, largest: int,
              title: str) -> bytes:
    """The local critical batch size against examples seen (``tuner local-cbs --plot``): B0
    and the largest branch drawn as the range it can show."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(examples, cbs, "o-", color="tab:blue", label="local CBS")
    ax.axhline(b0, color="tab:gray", ls=":", lw=1, label=f"B0 = {b0} (no branch kept up)")
    ax.axhline(largest, color="tab:red", ls=":", lw=1, label=f"largest branch, {largest}")
    ax.set_yscale("log", base=2)
    _log2_axis(ax.yaxis)
    ax.set_xlabel("examples seen by the reference run")
    ax.set_ylabel("local critical batch size")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig, tight=False)
