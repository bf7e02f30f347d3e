"""Plain-text tables for the terminal."""

from __future__ import annotations

from typing import Any, Sequence

from tuner.analysis.curves import Point
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
