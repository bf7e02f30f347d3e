"""McCandlish et al.'s model of the scaling curve, fitted to best steps-to-target per batch size.

S(B) = S_min (1 + B_noise / B), equivalently (S/S_min - 1)(E/E_min - 1) = 1 with E = S B.
So E_min = S_min B_noise and the critical batch size B_crit = E_min / S_min = B_noise.
The fit minimises squared error in log S (every batch size counts alike). The 95 % interval comes
from a bootstrap: trials are resampled with replacement within each batch size, the best steps
recomputed and the model refitted (basic bootstrap interval, see :func:`fit_with_bootstrap`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tuner.analysis.records import TrialRecord, best

#: Regime thresholds, in B / B_crit: below 1/4 the steps are within 25 % of perfect scaling
#: (S ~ S_min B_noise / B); above 4, within 25 % of S_min (maximal data parallelism).
PERFECT_BELOW = 0.25
MAXIMAL_ABOVE = 4.0

#: A fit is flagged unreliable with fewer batch sizes that reached the target than this ...
MIN_RELIABLE_POINTS = 4
#: ... or when the 95 % interval of B_crit spans more than this factor (high / low).
MAX_RELIABLE_SPAN = 100.0

#: Why a bootstrap resample gives no fit (keys of :attr:`Fit.boot_dropped`).
TOO_FEW = "fewer than 3 batch sizes reached the target"
NO_CONVERGENCE = "the fit did not converge"
AT_START = ("the target was met at step 0 (before any training) at some batch size: no "
            "scaling to fit; choose a stricter target")


@dataclass
class Fit:
    """A fitted scaling curve."""

    s_min: float
    b_noise: float
    residuals: dict[int, float] = field(default_factory=dict)  # B -> log2(S / S_fit)
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_boot: int = 0  # usable resamples (a fit each)
    n_boot_requested: int = 0
    boot_dropped: dict[str, int] = field(default_factory=dict)  # reason -> resamples
    #: the bootstrap's resamples of the best steps (:func:`bootstrap_bests`), kept for other
    #: statistics over the same resamples (tuner.analysis.cbs); not part of the JSON
    resamples: list[tuple[tuple[int, ...], tuple[float, ...]]] = field(
        default_factory=list, repr=False)
    #: the usable resamples' fits, ``(s_min, b_noise)`` per row; not part of the JSON
    samples: np.ndarray = field(default_factory=lambda: np.empty((0, 2)), repr=False)

    @property
    def n_points(self) -> int:
        """Batch sizes the fit used."""
        return len(self.residuals)

    @property
    def unreliable_because(self) -> list[str]:
        """Why the fit should not be trusted (empty when it can be)."""
        why = []
        if self.n_points < MIN_RELIABLE_POINTS:
            why.append(f"only {self.n_points} batch sizes reached the target "
                       f"(fewer than {MIN_RELIABLE_POINTS})")
        if "b_crit" in self.ci95:
            lo, hi = self.ci95["b_crit"]
            span = hi / lo if lo > 0 else math.inf
            if not span <= MAX_RELIABLE_SPAN:
                what = f"{span:.0f}x" if math.isfinite(span) else "an unbounded range"
                why.append(f"the 95 % interval of B_crit spans {what} "
                           f"(more than {MAX_RELIABLE_SPAN:.0f}x)")
        elif self.n_boot_requested and not self.n_boot:
            why.append(f"none of the {self.n_boot_requested} bootstrap resamples gave a fit")
        return why

    @property
    def reliable(self) -> bool:
        """Whether nothing in :attr:`unreliable_because` applies."""
        return not self.unreliable_because

    @property
    def e_min(self) -> float:
        """Fewest examples to target (as B -> 0)."""
        return self.s_min * self.b_noise

    @property
    def b_crit(self) -> float:
        """Critical batch size E_min / S_min."""
        return self.b_noise

    def steps(self, batch_size: float) -> float:
        """Fitted steps-to-target at ``batch_size``."""
        return self.s_min * (1.0 + self.b_noise / batch_size)

    def to_json(self) -> dict:
        """docs/DESIGN.md's ``fit`` object."""
        return {"s_min": self.s_min, "e_min": self.e_min, "b_crit": self.b_crit,
                "b_noise": self.b_noise,
                "residuals_log2": {str(b): r for b, r in self.residuals.items()},
                "ci95": {k: list(v) for k, v in self.ci95.items()}, "n_boot": self.n_boot,
                "n_boot_requested": self.n_boot_requested, "boot_dropped": self.boot_dropped,
                "n_points": self.n_points, "reliable": self.reliable,
                "unreliable_because": "; ".join(self.unreliable_because) or None}


def fit(batch_sizes: Sequence[int], steps: Sequence[float]) -> Fit | None:
    """Least-squares fit in log space; None with fewer than 3 points or no convergence."""
    return fit_or_reason(batch_sizes, steps)[0]


def fit_or_reason(batch_sizes: Sequence[int], steps: Sequence[float]
                  ) -> tuple[Fit | None, str | None]:
    """:func:`fit`, and why there is none (:data:`TOO_FEW`, :data:`AT_START` or
    :data:`NO_CONVERGENCE`)."""
    from scipy.optimize import least_squares  # heavy: scipy, only when needed

    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    if len(b) < 3:
        return None, TOO_FEW
    if (s <= 0).any():  # log S: a target met at initialisation (imported data evaluate step 0)
        return None, AT_START
    # Start from the linear least-squares fit of S = c0 + c1 / B (c0 = S_min, c1 = S_min B_noise).
    coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(b), 1.0 / b], axis=1), s, rcond=None)
    s0 = coef[0] if coef[0] > 0 else s.min()
    bn0 = coef[1] / s0 if coef[1] > 0 else b.min()
    log_s = np.log(s)

    def resid(theta: np.ndarray) -> np.ndarray:
        return _residuals(theta[0], theta[1], b, log_s)

    def jac(theta: np.ndarray) -> np.ndarray:  # d resid / d (log S_min, log B_noise)
        return np.stack([np.ones_like(b), _d_log_b_noise(theta[1], b)], axis=1)

    with np.errstate(over="ignore", invalid="ignore"):
        res = least_squares(resid, x0=[math.log(s0), math.log(bn0)], jac=jac, method="lm")
        s_min, b_noise = float(np.exp(res.x[0])), float(np.exp(res.x[1]))
    if not res.success or not all(map(math.isfinite, (s_min, b_noise, s_min * b_noise))) \
            or s_min <= 0 or b_noise <= 0:
        return None, NO_CONVERGENCE
    out = Fit(s_min, b_noise)
    out.residuals = {int(bb): float(r / math.log(2)) for bb, r in zip(b, -resid(res.x))}
    return out, None


#: A row of :func:`fit_many` counts as solved when one more Gauss-Newton step from its solution
#: moves neither log S_min nor log B_noise by more than this (else it is fitted alone).
STACK_TOL = 1e-8


#: Gauss-Newton steps that finish :func:`fit_many`'s sparse solve (quadratic convergence: the
#: last of them is already below :data:`STACK_TOL` wherever the row converged).
POLISH_STEPS = 3


def _residuals(log_s_min: Any, log_b_noise: Any, b: np.ndarray, log_s: np.ndarray
               ) -> np.ndarray:
    """log S_fit - log S of the model at ``b`` (parameters: scalars, or k x 1 columns for k
    data sets at once)."""
    return log_s_min + np.log1p(np.exp(log_b_noise) / b) - log_s


def _d_log_b_noise(log_b_noise: Any, b: np.ndarray) -> np.ndarray:
    """d residual / d log B_noise (d residual / d log S_min is 1)."""
    r = np.exp(log_b_noise) / b
    return r / (1.0 + r)


def _gauss_newton_step(t: np.ndarray, b: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """Each row's Gauss-Newton step (to subtract) for (log S_min, log B_noise) ``t`` (k x 2)."""
    q = _d_log_b_noise(t[:, 1:], b)
    r = _residuals(t[:, :1], t[:, 1:], b, log_s)
    a11, a12, a22 = float(b.size), q.sum(axis=1), (q * q).sum(axis=1)
    g1, g2 = r.sum(axis=1), (q * r).sum(axis=1)
    det = a11 * a22 - a12 * a12
    return np.stack([(a22 * g1 - a12 * g2) / det, (a11 * g2 - a12 * g1) / det], axis=1)


def fit_many(batch_sizes: Sequence[int], steps: np.ndarray
             ) -> list[tuple[tuple[float, float] | None, str | None]]:
    """(S_min, B_noise) of :func:`fit_or_reason` for each row of ``steps`` (one data set per
    row, all at ``batch_sizes``), or (None, why).

    The rows' fits are independent, so they are solved as one least-squares problem whose
    Jacobian is block-diagonal (scipy's ``least_squares`` with a sparse Jacobian): one call
    instead of one per row, ~10x faster for the bootstrap's hundreds of resamples. Each row
    starts where :func:`fit_or_reason` starts. A row whose solution fails the check of
    :data:`STACK_TOL`, or is not finite, is fitted alone with :func:`fit_or_reason`.
    """
    import scipy.sparse as sparse
    from scipy.optimize import least_squares  # heavy: scipy, only when needed

    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float).reshape(-1, len(b))
    k, n = s.shape
    if n < 3:
        return [(None, TOO_FEW)] * k
    # each row's start: the linear least-squares fit of S = c0 + c1 / B, as fit_or_reason's
    design = np.stack([np.ones_like(b), 1.0 / b], axis=1)
    coef = np.linalg.lstsq(design, s.T, rcond=None)[0]  # 2 x k
    s0 = np.where(coef[0] > 0, coef[0], s.min(axis=1))
    bn0 = np.where(coef[1] > 0, coef[1] / s0, b.min())
    log_s = np.log(s)
    rows = np.repeat(np.arange(k * n), 2)
    cols = (2 * np.arange(k)[:, None, None] + np.array([0, 1])).repeat(n, axis=1).ravel()

    def resid(theta: np.ndarray) -> np.ndarray:
        t = theta.reshape(k, 2)
        return _residuals(t[:, :1], t[:, 1:], b, log_s).ravel()

    def jac(theta: np.ndarray) -> Any:
        q = _d_log_b_noise(theta.reshape(k, 2)[:, 1:], b)
        data = np.stack([np.ones((k, n)), q], axis=2).ravel()
        return sparse.csr_matrix((data, (rows, cols)), shape=(k * n, 2 * k))

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        x0 = np.stack([np.log(s0), np.log(bn0)], axis=1).ravel()
        try:
            theta = least_squares(resid, x0, jac=jac, method="trf", tr_solver="lsmr",
                                  x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12).x
        except ValueError:  # a residual not finite at the start: every row alone
            theta = np.full(2 * k, np.nan)
        t = theta.reshape(k, 2).copy()
        # the sparse solver stops near each row's minimum; Gauss-Newton steps per row (2x2
        # normal equations) take it the rest of the way, and the last one is the check
        for _ in range(POLISH_STEPS + 1):
            step = _gauss_newton_step(t, b, log_s)
            t -= step
        step = np.abs(step)
        s_min, b_noise = np.exp(t[:, 0]), np.exp(t[:, 1])
        good = (np.isfinite(step).all(axis=1) & (step.max(axis=1) <= STACK_TOL)
                & np.isfinite(s_min * b_noise) & (s_min > 0) & (b_noise > 0))
    out: list[tuple[tuple[float, float] | None, str | None]] = []
    for i in range(k):
        if good[i]:
            out.append(((float(s_min[i]), float(b_noise[i])), None))
        else:
            g, why = fit_or_reason(b, s[i])
            out.append(((g.s_min, g.b_noise), None) if g is not None else (None, why))
    return out


def steps_pool(trials: Sequence[TrialRecord]) -> np.ndarray:
    """Steps of every finished trial for resampling: the steps of reached trials, inf for the
    rest (missed, pruned, diverged); running and failed trials left out."""
    return np.array([t.steps_to_target if t.outcome == "reached" else np.inf
                     for t in trials if t.finished], dtype=float)


def best_steps_per_batch(trials_by_b: dict[int, Sequence[TrialRecord]]) -> dict[int, int]:
    """Best steps-to-target per batch size (batch sizes without a reached trial left out)."""
    found = {b: best(trials) for b, trials in trials_by_b.items()}
    return {b: t.steps_to_target for b, t in found.items() if t is not None}


def best_cdf(n: int) -> np.ndarray:
    """P(the best of n values drawn with replacement from n values <= the k-th smallest of them),
    for k = 1..n: ``1 - ((n - k) / n)^n``, the closed form of a resample's best."""
    return 1.0 - ((n - np.arange(1, n + 1)) / n) ** n


def sample_bests(pool: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` draws of the best (minimum) of a resample of ``pool`` with replacement.

    Drawn from :func:`best_cdf` by inversion: one uniform number per resample instead of
    ``len(pool)`` indices, the same distribution as resampling and taking the minimum.
    """
    x = np.sort(np.asarray(pool, dtype=float))
    rank = np.searchsorted(best_cdf(len(x)), rng.random(n_boot), side="right")
    return x[np.minimum(rank, len(x) - 1)]


def bootstrap_bests(trials_by_b: dict[int, Sequence[TrialRecord]], n_boot: int, seed: int
                    ) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """``n_boot`` bootstrap resamples of the best steps: per resample, trials drawn with
    replacement within each batch size (steps of reached trials, the rest never reaching),
    and ``(batch sizes whose draw reached the target, their best steps)``, in the order of
    ``trials_by_b``. Each batch size's best is drawn directly (:func:`sample_bests`).
    The same ``seed`` gives the same resamples (the fit and :mod:`tuner.analysis.cbs` share
    them)."""
    rng = np.random.default_rng(seed)
    # per batch size: steps of reached trials, inf for the rest (resampling picks among all)
    pools = {b: steps_pool(trials) for b, trials in trials_by_b.items()}
    bs = [b for b, pool in pools.items() if len(pool)]
    if not bs:
        return [((), ())] * n_boot
    bests = np.column_stack([sample_bests(pools[b], n_boot, rng) for b in bs])
    reached = np.isfinite(bests)
    return [(tuple(b for b, ok in zip(bs, row_ok) if ok), tuple(row[row_ok].tolist()))
            for row, row_ok in zip(bests, reached)]


def fit_with_bootstrap(trials_by_b: dict[int, Sequence[TrialRecord]], n_boot: int = 1000,
                       seed: int = 0) -> Fit | None:
    """Fit the best steps per batch size, with a 95 % percentile bootstrap interval.

    Pruned trials count as "not reached" in a resample: their steps are only known to exceed
    the pruning step, so a resample without the best trial sees the next reached one.
    A resample that gives no fit (fewer than 3 batch sizes reached in it, or no convergence)
    is dropped and counted in ``boot_dropped`` by reason; ``n_boot`` is the usable ones.
    """
    found = best_steps_per_batch(trials_by_b)
    f = fit(list(found), list(found.values()))
    if f is None:
        return None
    f.n_boot_requested = n_boot
    resamples = f.resamples = bootstrap_bests(trials_by_b, n_boot, seed)
    # the distinct resamples (large studies repeat the same bests), fitted together per set of
    # batch sizes that reached the target
    groups: dict[tuple, set[tuple]] = {}
    for bs, ss in resamples:
        groups.setdefault(bs, set()).add(ss)
    fits: dict[tuple, tuple[tuple[float, float] | None, str | None]] = {}
    for bs, group in groups.items():
        distinct = sorted(group)
        for ss, result in zip(distinct, fit_many(bs, np.array(distinct, dtype=float))):
            fits[(bs, ss)] = result
    samples = []
    for key in resamples:
        g, why = fits[key]
        if g is None:
            assert why is not None
            f.boot_dropped[why] = f.boot_dropped.get(why, 0) + 1
        else:
            samples.append((g[0], g[1], g[0] * g[1]))
    if samples:
        f.samples = np.array(samples)[:, :2]
        # The basic (reverse-percentile) interval est^2 / q: a resample's best-of-n can only be
        # worse than the sample's, so plain percentiles sit above the estimate; reflecting them
        # carries that bias over to the other side, where the true curve lies.
        # Reflected in log space, so the interval of a positive quantity stays positive.
        q_lo, q_hi = np.percentile(np.log(np.array(samples)), [2.5, 97.5], axis=0)
        est = np.log([f.s_min, f.b_noise, f.e_min])
        lo, hi = np.exp(2 * est - q_hi), np.exp(2 * est - q_lo)
        f.ci95 = {k: (float(lo[i]), float(hi[i])) for k, i in
                  (("s_min", 0), ("b_crit", 1), ("b_noise", 1), ("e_min", 2))}
    f.n_boot = len(samples)
    return f


#: The regimes in the order of B / B_crit.
REGIMES = ("perfect scaling", "diminishing returns", "maximal data parallelism")


def regime(batch_size: int, f: Fit) -> str:
    """``perfect scaling`` | ``diminishing returns`` | ``maximal data parallelism``."""
    return _regime(batch_size, f.b_crit)


def _regime(batch_size: int, b_crit: float) -> str:
    """:func:`regime` at the critical batch size ``b_crit`` (0: maximal data parallelism)."""
    r = batch_size / b_crit if b_crit > 0 else math.inf
    if r <= PERFECT_BELOW:
        return "perfect scaling"
    if r >= MAXIMAL_ABOVE:
        return "maximal data parallelism"
    return "diminishing returns"


def regimes(batch_size: int, f: Fit) -> list[str]:
    """Every regime ``batch_size`` falls in over B_crit's 95 % interval and the estimate, in
    the order of B / B_crit (one entry when the interval crosses no regime boundary)."""
    found = {_regime(batch_size, c) for c in (f.b_crit, *f.ci95.get("b_crit", ()))}
    if {REGIMES[0], REGIMES[2]} <= found:  # the interval crosses the middle one too
        found.add(REGIMES[1])
    return [r for r in REGIMES if r in found]
