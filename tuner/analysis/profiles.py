"""Performance profiles over batch sizes (AlgoPerf-style; Dolan & Moré 2002): how often each
spec (optimizer) comes within a factor tau of the fewest steps any of them needed.

For specs measured on the same workload and target, at each batch size every spec studied, the
ratio of a spec's best steps to the best over the specs; a spec whose study reached the target
in no trial has an infinite ratio (a failure counts against it). The profile of a spec is the
fraction of those batch sizes where its ratio is <= tau; its score, the mean of the profile over
tau in [1, TAU_MAX] (AlgoPerf's normalised area under the profile, tau_max = 4 as there): 1 when
it is the best at every batch size, 0 when it is never within 4x. Batch sizes that some spec did
not study, or where no spec reached the target, are left out, and said so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuner.analysis.adequacy import UNDER_TUNED
from tuner.analysis.curves import Curve
from tuner.analysis.records import SpecStudies

#: The largest ratio the score integrates to (AlgoPerf's tau_max).
TAU_MAX = 4.0
#: The taus the profile table shows.
TAUS = (1.0, 1.1, 1.25, 1.5, 2.0, 4.0)


@dataclass
class Profile:
    """The profiles of several specs over their common batch sizes."""

    names: list[str]
    batch_sizes: list[int]  # the batch sizes the ratios are over
    ratios: dict[str, dict[int, float]]  # spec -> batch size -> best steps / fewest (inf: none)
    left_out: dict[int, str] = field(default_factory=dict)  # batch size -> why
    under_tuned: dict[str, list[int]] = field(default_factory=dict)  # spec -> B (adequacy)

    def fraction(self, name: str, tau: float) -> float:
        """The fraction of batch sizes where ``name`` is within ``tau`` of the fewest steps."""
        r = self.ratios[name]
        return sum(r[b] <= tau * (1 + 1e-12) for b in self.batch_sizes) / len(self.batch_sizes)

    def score(self, name: str, tau_max: float = TAU_MAX) -> float:
        """The mean of the profile over tau in [1, tau_max] (exact: the profile is a step
        function, so this is the mean over batch sizes of (tau_max - max(1, ratio)) / (tau_max -
        1), clipped at 0)."""
        r = self.ratios[name]
        return sum(max(0.0, tau_max - max(1.0, r[b])) for b in self.batch_sizes) / (
            (tau_max - 1.0) * len(self.batch_sizes))

    def wins(self, name: str) -> int:
        """Batch sizes where ``name`` needs the fewest steps (ties count for each)."""
        return sum(self.ratios[name][b] == 1.0 for b in self.batch_sizes)


def profile(curves: Sequence[Curve]) -> Profile | None:
    """The performance profile of ``curves`` (one per spec, same workload and target), or None
    when fewer than two curves or no batch size is left to compare."""
    if len(curves) < 2:
        return None
    names = [c.name for c in curves]
    steps = {c.name: {p.batch_size: p.best_steps for p in c.points} for c in curves}
    every = sorted({b for s in steps.values() for b in s})
    left_out: dict[int, str] = {}
    kept = []
    for b in every:
        missing = [n for n in names if b not in steps[n]]
        if missing:
            left_out[b] = f"not studied by {', '.join(missing)}"
        elif all(steps[n][b] is None for n in names):
            left_out[b] = "no spec reached the target"
        else:
            kept.append(b)
    if not kept:
        return None
    ratios: dict[str, dict[int, float]] = {n: {} for n in names}
    for b in kept:
        best = min(s for n in names if (s := steps[n][b]) is not None)
        for n in names:
            s = steps[n][b]
            ratios[n][b] = math.inf if s is None else s / best
    under = {c.name: [p.batch_size for p in c.points if p.tuning == UNDER_TUNED
                      and p.batch_size in kept] for c in curves}
    return Profile(names, kept, ratios, left_out, {n: bs for n, bs in under.items() if bs})


def comparable(specs: Sequence[SpecStudies], curves: Sequence[Curve]
               ) -> list[tuple[str, list[Curve]]]:
    """The groups of curves a profile compares: specs on the same workload (with the same
    options) and target, at least two of them; ``(what they share, their curves)``."""
    groups: dict[str, list[Curve]] = {}
    for s, c in zip(specs, curves):
        options = s.attrs.get("workload_options", {})
        shown = ", ".join(f"{k}={v}" for k, v in sorted(options.items()) if v not in ("", None))
        t = c.target
        key = (f"{s.attrs.get('workload', '?')} ({shown}), {t.get('metric')} "
               f"{'<=' if t.get('direction', 'minimize') == 'minimize' else '>='} "
               f"{t.get('value')}")
        groups.setdefault(key, []).append(c)
    return [(k, cs) for k, cs in groups.items() if len(cs) >= 2]


def profiles(specs: Sequence[SpecStudies], curves: Sequence[Curve]
             ) -> list[tuple[str, Profile]]:
    """The profile of every :func:`comparable` group that has one: ``(what they share,
    profile)``."""
    return [(what, p) for what, group in comparable(specs, curves)
            if (p := profile(group)) is not None]


def profile_notes(prof: Profile) -> list[str]:
    """The lines under a profile: the batch sizes left out and the under-tuned points."""
    notes = [f"left out: B = {b} ({why})" for b, why in prof.left_out.items()]
    return notes + [f"under-tuned points (their ratios may move): {n} at B = "
                    f"{', '.join(map(str, bs))}" for n, bs in prof.under_tuned.items()]


def profile_rows(prof: Profile, taus: Sequence[float] = TAUS
                 ) -> tuple[list[str], list[list[str]]]:
    """The profile table: per spec, the fraction within each tau, the score and the wins."""
    header = ["spec", *(f"tau<={t:g}" for t in taus), "score", "fewest_steps_at"]
    rows = []
    for n in prof.names:
        rows.append([n, *(f"{prof.fraction(n, t):.2f}" for t in taus),
                     f"{prof.score(n):.3f}", f"{prof.wins(n)}/{len(prof.batch_sizes)}"])
    return header, rows


def profile_json(prof: Profile, taus: Sequence[float] = TAUS) -> dict[str, object]:
    """The profile as plain data (``tuner profile --format json``)."""
    return {
        "batch_sizes": prof.batch_sizes,
        "ratios": {n: {str(b): (r if math.isfinite(r) else None) for b, r in rs.items()}
                   for n, rs in prof.ratios.items()},
        "profile": {n: {f"{t:g}": prof.fraction(n, t) for t in taus} for n in prof.names},
        "score": {n: prof.score(n) for n in prof.names},
        "tau_max": TAU_MAX,
        "left_out": {str(b): why for b, why in prof.left_out.items()},
        "under_tuned": prof.under_tuned,
    }
