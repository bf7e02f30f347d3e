"""The noisy quadratic model beside a trained comparison (Zhang et al. 2019): optimizers grouped
into the families the NQM models, and per family the critical batch size and the plateau in the
model and in the measurement, each relative to the same side's SGD.

The NQM solves SGD, heavy-ball momentum and SGD preconditioned by H^-p in closed form; Zhang et
al. model Adam-like optimizers as preconditioning. So a trained ``sgd`` is compared with the
NQM's SGD, ``momentum``/``nesterov`` with its momentum, and the preconditioned optimizers
(``adam``, ``adamw``, ``nadam``, ``lamb``, ``shampoo``, ``soap``) with its preconditioned SGD;
the others (``lars``, ``lion``, ``muon``, any ``PACKAGE.NAME``) have no NQM counterpart and are
shown on the measured side alone. The comparison is of ratios (B_crit / B_crit of SGD, S_min /
S_min of SGD), never of raw steps: the model's steps are in its own units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tuner.analysis.curves import Curve
from tuner.analysis.records import SpecStudies

MODEL_WORKLOAD = "nqm"
PRECONDITIONED = frozenset({"adam", "adamw", "nadam", "lamb", "shampoo", "soap"})
#: The families in the order the table shows them.
ORDER = ("sgd", "momentum", "preconditioned")


def family(s: SpecStudies) -> str:
    """The family a spec's optimizer belongs to: ``sgd``, ``momentum``, ``preconditioned``
    (with the NQM's power, ``preconditioned (p = 0.5)``), or the optimizer's own name."""
    name = s.attrs.get("optimizer", "")
    if s.attrs.get("workload") == MODEL_WORKLOAD:
        p = float(s.attrs.get("workload_options", {}).get("precondition_power", 0.0) or 0.0)
        if p > 0:
            return f"preconditioned (p = {p:g})"
        ema = s.attrs.get("workload_options", {}).get("ema")
        return name if not ema else f"{name} + EMA"
    if name in ("momentum", "nesterov"):
        return "momentum"
    return "preconditioned" if name in PRECONDITIONED else name


@dataclass
class Side:
    """One spec of a side: its family, curve and the ratios to the same side's SGD."""

    family: str
    curve: Curve
    b_crit_ratio: float | None  # B_crit / B_crit of this side's SGD (None: no fit or no SGD)
    s_min_ratio: float | None

    @property
    def base(self) -> str:
        """The family without the NQM's preconditioning power: the table's row."""
        return "preconditioned" if self.family.startswith("preconditioned") else self.family

    @property
    def variant(self) -> bool:
        """Whether this is a variant of its family (a preconditioning power, an EMA)."""
        return self.family != self.base or "EMA" in self.family


@dataclass
class Comparison:
    """The NQM specs and the trained specs of one report, side by side."""

    model: list[Side]
    measured: list[Side]
    measured_workload: str

    def rows(self) -> tuple[list[str], list[list[object]]]:
        """One row per family present on either side: B_crit with its interval and the ratios
        to SGD, in the model and in the measurement."""
        families = sorted({s.base for s in self.model + self.measured},
                          key=lambda f: (ORDER.index(f) if f in ORDER else len(ORDER), f))
        header = ["family", "model spec", "model B_crit", "model B_crit/SGD",
                  "model S_min/SGD", "measured spec", "measured B_crit", "measured B_crit/SGD",
                  "measured S_min/SGD"]
        rows = []
        for f in families:
            ms = [s for s in self.model if s.base == f] or [None]
            ts = [s for s in self.measured if s.base == f] or [None]
            for i in range(max(len(ms), len(ts))):
                m = ms[i] if i < len(ms) else None
                t = ts[i] if i < len(ts) else None
                rows.append([f, *_cells(m), *_cells(t)])
        return header, rows


def _b_crit_text(c: Curve) -> str:
    if c.fit is None:
        return "no fit"
    lo_hi = c.fit.ci95.get("b_crit")
    text = f"{c.fit.b_crit:.3g}" + (f" [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]" if lo_hi else "")
    return text + ("" if c.fit.reliable and not c.under_tuned else " (unreliable)")


def _cells(s: Side | None) -> list[object]:
    if s is None:
        return ["-", "-", None, None]
    return [s.curve.name, _b_crit_text(s.curve), s.b_crit_ratio, s.s_min_ratio]


def _sides(specs: Sequence[SpecStudies], curves: Sequence[Curve]) -> list[Side]:
    fams = [family(s) for s in specs]
    sgd = next((c for f, c in zip(fams, curves) if f == "sgd" and c.fit is not None), None)
    out = []
    for f, c in zip(fams, curves):
        ok = sgd is not None and c.fit is not None
        out.append(Side(f, c, c.fit.b_crit / sgd.fit.b_crit if ok else None,
                        c.fit.s_min / sgd.fit.s_min if ok else None))
    return out


def compare(specs: Sequence[SpecStudies], curves: Sequence[Curve]) -> Comparison | None:
    """The side-by-side comparison when the specs include NQM specs and trained specs of one
    other workload (None otherwise, or when the trained specs span several workloads)."""
    model = [(s, c) for s, c in zip(specs, curves) if s.attrs.get("workload") == MODEL_WORKLOAD]
    trained = [(s, c) for s, c in zip(specs, curves)
               if s.attrs.get("workload") != MODEL_WORKLOAD]
    workloads = {s.attrs.get("workload") for s, _ in trained}
    if not model or not trained or len(workloads) != 1:
        return None
    return Comparison(_sides(*zip(*model)), _sides(*zip(*trained)), workloads.pop())
