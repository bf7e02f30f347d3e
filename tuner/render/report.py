"""``tuner report``: one self-contained HTML page (figures embedded) with every table and figure,
and the scaling figure attached to the studies for optuna-dashboard."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

import optuna

from tuner.analysis.cbs import MEANINGS
from tuner.analysis.confirm import ConfigResult, dependence
from tuner.analysis.curves import Curve
from tuner.analysis.families import compare
from tuner.analysis.profiles import TAU_MAX, profile_notes, profile_rows, profiles
from tuner.analysis.quality import quality, standard_budgets
from tuner.analysis.records import SpecStudies
from tuner.analysis.sensitivity import sensitivity
from tuner.analysis.series import series_curves
from tuner.analysis.summary import (
    RULE_TEXT,
    Verdict,
    edge_findings,
    time_optimal_line,
    verdict,
)
from tuner.render import plots
from tuner.render.tables import (
    confirm_rows,
    curve_rows,
    edge_rows,
    fit_line,
    sensitivity_rows,
    series_rows,
)

CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; }
.verdict { border: 2px solid #888; padding: 0.6em 1em; margin: 1em 0; border-radius: 6px; }
.ok { border-color: #2a2; background: #f3fff3; } .bad { border-color: #c33; background: #fff4f4; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.3em 0; }
"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict_box(name: str, v: Verdict, n_batch: int) -> str:
    good = (v.edges_clean and not v.budget_tight and not v.missing and not v.fit_problems
            and not v.under_tuned)
    items = [
        "edges clean" if v.edges_clean else "best trials at an edge: " + "; ".join(
            html.escape(p) for p in v.edge_problems),
        ("budget adequate (no best trial used > 90 % of its budget)" if not v.budget_tight else
         f"budget tight at B = {v.budget_tight} ({v.budget_share:.0%} of {n_batch} batch sizes"
         f" used > 90 % of the budget)"),
    ]
    if not v.missing:
        items.append("no batch size missing")
    if v.not_run:
        items.append(f"not run (in the spec, no finished trial stored): B = {v.not_run}")
    if v.not_reached:
        items.append(f"no trial reached the target: B = {v.not_reached}")
    items.append(f"every batch size with a point adequately tuned ({html.escape(RULE_TEXT)})"
                 if not v.under_tuned else "; ".join(html.escape(u) for u in v.under_tuned)
                 + f" (adequately tuned: {html.escape(RULE_TEXT)})")
    items.append("fit reliable" if not v.fit_problems else "fit unreliable: " + "; ".join(
        html.escape(p) for p in v.fit_problems))
    lis = "".join(f"<li>{i}</li>" for i in items)
    return (f'<div class="verdict {"ok" if good else "bad"}"><b>Verdict for '
            f'{html.escape(name)}: {"sound" if good else "needs attention"}</b>'
            f'<ul>{lis}</ul></div>')


def _profiles(specs: Sequence[SpecStudies], curves: Sequence[Curve]) -> list[str]:
    """A performance-profile section per group of specs on the same workload and target."""
    colors = {c.name: f"C{i}" for i, c in enumerate(curves)}  # as in the scaling figure
    parts = []
    for what, prof in profiles(specs, curves):
        notes = [f"Fraction of the {len(prof.batch_sizes)} batch sizes (B = "
                 f"{', '.join(map(str, prof.batch_sizes))}) where a spec's best steps are within "
                 f"tau of the fewest any spec needed; score = the mean over tau in [1, "
                 f"{TAU_MAX:g}] (1: the fewest at every B; a B it never reached counts as a "
                 "miss).", *profile_notes(prof)]
        parts += [f"<h2>Performance profiles: {html.escape(what)}</h2>",
                  *(f"<p>{html.escape(n)}</p>" for n in notes),
                  _img(plots.profiles(prof, colors), "performance profiles"),
                  _table(*profile_rows(prof))]
    return parts


def _model_vs_measurement(specs: Sequence[SpecStudies], curves: Sequence[Curve]) -> list[str]:
    """The NQM specs beside the trained ones, when the report has both."""
    comp = compare(specs, curves)
    if comp is None:
        return []
    return ["<h2>Model vs measurement: the NQM's prediction beside the trained optimizers</h2>",
            "<p>Zhang et al. (2019): momentum and preconditioning should raise the critical "
            "batch size over SGD's and lower the plateau (S_min). The model's steps are in its "
            "own units, so the table compares ratios to the same side's SGD. Adam-like "
            "optimizers (adam, adamw, nadam, lamb, shampoo, soap) are set beside the "
            "preconditioned NQM; lars, lion and muon have no NQM counterpart.</p>",
            _img(plots.model_vs_measurement(comp), "model vs measurement"),
            _table(*comp.rows())]


def _cbs(curves: Sequence[Curve]) -> list[str]:
    """The three critical batch sizes of each curve, and what each means."""
    parts = ["<h2>The critical batch size, three ways</h2>", "<ul>"]
    parts += [f"<li>{html.escape(text)}</li>" for text in MEANINGS.values()]
    parts.append("</ul>")
    parts += [f"<p>{html.escape(c.name)}: {html.escape(c.cbs.line())}</p>"
              for c in curves if c.cbs is not None]
    return parts


def _series(curves: Sequence[Curve]) -> list[str]:
    """A section for the series among the specs (e.g. the training-set size)."""
    groups = series_curves(curves)
    if not groups:
        return []
    parts = ["<h2>Series: the critical batch size against the series value</h2>",
             "<p>Each member is its own spec and studies, on the value shown (Shallue et al. "
             "section 4.5 on data-set size). Its B_crit and S_min are the McCandlish fit of its "
             "own curve, with the 95 % bootstrap interval; an unreliable fit (see its own "
             "section) is drawn hollow and left out of the trend.</p>",
             _img(plots.series(groups), "series")]
    for sc in groups:
        parts += [f"<h3>{html.escape(sc.name)} at {html.escape(sc.target)}</h3>",
                  f"<p>{html.escape(sc.trend())}</p>", _table(*series_rows(sc))]
    return parts


def _quality(with_curves: Sequence[SpecStudies]) -> list[str]:
    """Fixed-epoch vs fixed-step solution quality, for the specs that train to their budget."""
    parts = []
    for s in with_curves:
        metric, direction = s.target["metric"], s.target.get("direction", "minimize")
        budgets = standard_budgets(s)
        results = [(label, metric, quality(s, metric, direction, **kw)) for label, kw in budgets]
        epochs = [r for r, (_, kw) in zip(results, budgets) if "max_epochs" in kw]
        steps = [r for r, (_, kw) in zip(results, budgets) if "max_steps" in kw]
        parts += [f"<h2>Solution quality: {html.escape(s.name)}</h2>",
                  "<p>The best validation " + html.escape(metric) + " reached within a budget, "
                  "per batch size (every trial trained its whole budget, so it is exact). A "
                  "fixed number of epochs gives large batches fewer steps; a fixed number of "
                  "steps gives them more examples: the two measure different things (Shallue "
                  "et al. section 4.7).</p>"]
        for group, what in ((epochs, "fixed epochs"), (steps, "fixed steps")):
            if not group:
                continue
            parts.append(_img(plots.quality(group, what), f"quality at {what}"))
            header = ["batch_size", *[label for label, _, _ in group]]
            rows = [[p.batch_size, *[g[2][i].best_value for g in group]]
                    for i, p in enumerate(group[0][2])]
            parts.append(_table(header, rows))
    return parts


def _confirmations(confirmed: Sequence[tuple[SpecStudies, Sequence[ConfigResult]]]
                   ) -> list[str]:
    """The ``tuner confirm`` results of the specs that have them."""
    parts = []
    for s, results in confirmed:
        parts += [f"<h2>Confirmation with fresh seeds: {html.escape(s.name)}</h2>",
                  "<p>The best configurations of each batch size re-run with fresh seeds "
                  "(<code>tuner confirm</code>): the original best-of-N steps against the "
                  "seeds' mean (optimism = mean / original: above 1, the original was a lucky "
                  "draw), with the seed noise of steps-to-target; where the target was reached, "
                  "the validation and test metric and the sharpness.</p>",
                  _table(*confirm_rows(results)),
                  *(f"<p>{html.escape(dependence(results, w))}</p>"
                    for w in ("sharpness", "test"))]
        slices = [(r.batch_size, r.landscape) for r in results if r.landscape]
        if slices:
            parts += ["<p>Loss-landscape slices (Li et al. 2018) of the best configuration's "
                      "first fresh seed where it reached the target: the training loss on the "
                      "sharpness examples along one and two random filter-normalised "
                      "directions (each filter of the direction scaled to that filter's norm "
                      "in the model; biases left out), so batch sizes compare.</p>",
                      _img(plots.landscapes(slices), "loss landscapes")]
    return parts


def render(specs: Sequence[SpecStudies], curves: Sequence[Curve],
           with_curves: Sequence[SpecStudies] = (),
           confirmed: Sequence[tuple[SpecStudies, Sequence[ConfigResult]]] = ()) -> str:
    """The report page as HTML text."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Batch-size scaling report"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Batch-size scaling: {html.escape(', '.join(s.name for s in specs))}</h1>"]
    findings = {s.name: edge_findings(s, tuning=list(c.tuning.values()))
                for s, c in zip(specs, curves)}
    for s, c in zip(specs, curves):
        parts.append(_verdict_box(s.name, verdict(s, findings[s.name], c), len(s.studies)))
    parts += ["<h2>Scaling curve</h2>", _img(plots.scaling(curves), "scaling curve")]
    for c in curves:
        parts += [f"<h3>{html.escape(c.name)}</h3>", f"<p>{html.escape(fit_line(c))}</p>",
                  _table(*curve_rows(c))]
    parts += _cbs(curves)
    parts += _series(curves)
    parts += _quality(with_curves)
    parts += _confirmations(confirmed)
    parts += _profiles(specs, curves)
    parts += _model_vs_measurement(specs, curves)
    parts += ["<h2>Learning rate vs batch size</h2>",
              _img(plots.learning_rates(curves), "learning rates"),
              "<h2>Time to target</h2>",
              "<p>Steps at different batch sizes cost different time. Per batch size: the "
              "median over its finished, not diverged trials of the steady-state seconds per "
              "step (after the first 5 steps, evaluation excluded) on the device they ran on, "
              "times the best steps.</p>",
              *(f"<p>{html.escape(c.name)}: {html.escape(time_optimal_line(c) or 'no step time stored')}</p>"
                for c in curves),
              _img(plots.time_to_target(curves), "time to target")]
    for s, c in zip(specs, curves):
        sens = [sensitivity(st, tuning=c.tuning.get(st.batch_size)) for st in s.studies]
        parts += [f"<h2>Edges: {html.escape(s.name)}</h2>", _table(*edge_rows(findings[s.name])),
                  f"<h2>Sensitivity: {html.escape(s.name)}</h2>",
                  "<p>good = trials within 1.25x of the best steps; unknown = pruned before "
                  "1.25x the best, so not classifiable (a pruner slack >= 1.25 settles them)."
                  "</p>", _table(*sensitivity_rows(sens)),
                  _img(plots.lr_momentum_scatter(s.studies), "learning rate x momentum")]
        for st in s.studies:
            parts.append(_img(plots.axis_plots(st), f"axis plots B={st.batch_size}"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write(out: Path, specs: Sequence[SpecStudies], curves: Sequence[Curve],
          with_curves: Sequence[SpecStudies] = (),
          confirmed: Sequence[tuple[SpecStudies, Sequence[ConfigResult]]] = ()) -> Path:
    """Write ``out/index.html`` (whole file written to a temp name, then renamed);
    ``with_curves``: specs loaded with their stored curves, for the solution-quality
    sections (specs that train to their budget); ``confirmed``: ``tuner confirm``'s results."""
    out.mkdir(parents=True, exist_ok=True)
    page = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(render(specs, curves, with_curves, confirmed))
    tmp.replace(page)
    return page


def attach_to_dashboard(storage: Any, specs: Sequence[SpecStudies], curves: Sequence[Curve]
                        ) -> int:
    """Save the scaling curve as a plotly figure and a note on every study; returns the count."""
    import plotly.graph_objects as go  # heavy: plotly, only when needed
    from optuna_dashboard import (  # heavy: optuna-dashboard, only when needed
        save_note,
        save_plotly_graph_object,
    )

    fig = go.Figure()
    for c in curves:
        pts = c.reached()
        fig.add_trace(go.Scatter(x=[p.batch_size for p in pts], y=[p.best_steps for p in pts],
                                 mode="lines+markers", name=c.name))
    fig.update_xaxes(type="log", title="batch size")
    fig.update_yaxes(type="log", title="steps to target")
    fig.update_layout(title="Scaling curve")
    n = 0
    for s, c in zip(specs, curves):
        note = f"## Scaling curve of {c.name}\n\n{fit_line(c)}\n\n" + "\n".join(
            f"- B = {p.batch_size}: best steps {p.best_steps}" for p in c.points)
        for st in s.studies:
            study = optuna.load_study(study_name=st.study_name, storage=storage)
            save_plotly_graph_object(study, fig, graph_object_id="scaling-curve")
            save_note(study, note)
            n += 1
    return n
