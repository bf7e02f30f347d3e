"""The noisy quadratic model (Zhang et al. 2019) as DESIGN.md defines it, solved in closed form.

Loss L(x) = 1/2 sum_i h_i x_i^2 with h_i = 1/i (i = 1..K), x_0 ~ N(0, I). A batch of B has gradient
noise of variance h_i / B in direction i; the preconditioner is H^-p. Per direction, with
a = lr h^(1-p) and n = lr^2 h^(-2p) h / B, heavy-ball momentum m (m = 0: plain SGD) gives the
linear recursion z' = A z - lr h^-p eps on z = (x, u), A = [[1-a, m], [-a, m]], whose second
moments are

    Sigma(t) = S + A^t (Sigma_0 - S) A^t',    S = A S A' + Q   (the steady state),

so E x_i^2(t) = S_xx + r(t) D r(t)' with D = Sigma_0 - S and r(t) = e_x' A^t. By Cayley-Hamilton,
A^t = U_t A - m U_{t-1} I with U_t = (l1^t - l2^t) / (l1 - l2) (l1, l2: eigenvalues of A), so the
transient q(t) = r D r' is a quadratic form in (U_t, U_{t-1}), and expands into three geometric
terms c1 l1^(2t) + c2 l2^(2t) + c3 m^t. Nothing is simulated: L(t) = 1/2 sum_i h_i E x_i^2(t).

Steps-to-target, exactly: the smallest integer t with L(t) <= target. L need not be monotone
(momentum oscillates; noise can make a direction's second moment grow toward its steady state),
so we search with certified lower bounds. On an interval [t0, t1] every geometric term with a
real base in [0, 1) is monotone, so its minimum is at an end; a complex-conjugate pair plus its
m^t term is at least (c3 - 2|c1|) m^t. Summing the minima gives LB(t0, t1) <= min L on the
interval. The search walks doubling blocks [1, 1], [2, 3], [4, 7], ... left to right, skips any
block with LB > target, and bisects the others depth-first, left half first, down to single steps
where L is evaluated exactly. Everything skipped provably stays above the target and everything to
the left of the answer was skipped or evaluated, so the answer is the smallest such t.

Near-degenerate directions (l1 ~ l2, critical damping), where the three-term expansion cancels
catastrophically, are evaluated through a stable form of U_t (sinh of t atanh(e)), and bounded
below by dropping their non-negative part and bounding the rest with |U_t| <= t rho^(t-1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tuner.workload import Reporter, TrialRequest, TrialResult, Workload

#: Directions with |l1 - l2| < DEGENERATE x |(l1 + l2) / 2| use the stable, bounded-by-envelope path.
DEGENERATE = 1e-4
#: Bound evaluations allowed before the search gives up (it never has in our tests).
MAX_BOUND_EVALS = 200_000


@dataclass
class NQMOptions:
    """Options of the ``nqm`` workload."""

    dimensions: int = 10_000  # K: h_i = 1/i, i = 1..K
    precondition_power: float = 0.0  # p: preconditioner H^-p, 0 <= p < 1


def spectrum(k: int) -> np.ndarray:
    """Curvatures h_i = 1/i, i = 1..k."""
    return 1.0 / np.arange(1, k + 1, dtype=np.float64)


class Dynamics:
    """Closed-form expected loss of SGD / heavy-ball momentum on the NQM.

    Args:
        h: curvatures per direction.
        lr: learning rate.
        one_minus_momentum: 1 - m, or None (and 1.0) for plain SGD.
        batch_size: B.
        p: preconditioning power.
    """

    def __init__(self, h: np.ndarray, lr: float, one_minus_momentum: float | None,
                 batch_size: int, p: float = 0.0) -> None:
        omm = 1.0 if one_minus_momentum is None else float(one_minus_momentum)
        m = 1.0 - omm
        self.h, self.m, self.omm = h, m, omm
        a = lr * h ** (1.0 - p)
        n = lr * lr * h ** (-2.0 * p) * h / batch_size
        self.loss0 = 0.5 * float(h.sum())  # E x0^2 = 1
        # Stable iff both eigenvalues of A lie inside the unit circle: 0 < a < 2 (1 + m).
        self.diverged = bool(np.any(a >= 2.0 * (1.0 + m)))
        self.bound_evals = 0
        if self.diverged:
            return
        half_h = 0.5 * h
        if m == 0.0:
            sxx = n / (a * (2.0 - a))
            self.loss_star = float(half_h @ sxx)
            # q(t) = (1 - sxx) (1 - a)^(2t): one monotone term per direction
            base_log = 2.0 * np.log(np.abs(1.0 - a))  # -inf where a == 1: the term is 0 for t >= 1
            self._set_terms(half_h * (1.0 - sxx), base_log, np.empty(0), np.empty(0),
                            np.empty(0), np.empty(0))
            self._deg = None
            return
        k = 2.0 * (1.0 + m) - a
        sxx = n * (1.0 + m) / (a * omm * k)
        suu = 2.0 * n / (omm * k)
        sxu = n / (omm * k)
        self.loss_star = float(half_h @ sxx)
        dxx, duu, dxu = 1.0 - sxx, -suu, -sxu
        g11 = (1 - a) ** 2 * dxx + 2 * (1 - a) * m * dxu + m * m * duu
        g12 = -m * ((1 - a) * dxx + m * dxu)
        g22 = m * m * dxx
        tr = 1.0 - a + m
        # tr^2 - 4m, written to avoid cancelling O(1) terms when a and 1 - m are small
        disc = omm * omm - 2.0 * a * (1.0 + m) + a * a
        deg = np.abs(disc) < (DEGENERATE * tr) ** 2
        real = (disc > 0) & ~deg
        cplx = (disc <= 0) & ~deg

        # Real, distinct eigenvalues: l1 (larger magnitude, no cancellation) and l2 = m / l1.
        sq = np.sqrt(np.where(real, disc, 1.0))
        l1 = np.where(real, 0.5 * (tr + np.copysign(sq, tr)), 1.0)
        l2 = m / l1
        delta2 = np.where(real, disc, 1.0)  # (l1 - l2)^2
        c1 = (g11 + 2 * g12 / l1 + g22 / l1 ** 2) / delta2
        c2 = (g11 + 2 * g12 / l2 + g22 / l2 ** 2) / delta2
        c3 = (-2 * g11 - 2 * g12 * tr / m - 2 * g22 / m) / delta2
        # log |l1|, accurately when l1 is close to 1: 1 - l1 = 2a / (a + (1 - m) + sqrt(disc))
        one_minus_l1 = 2.0 * a / (a + omm + sq)
        with np.errstate(divide="ignore"):
            log_l1 = np.where(tr > 0, np.log1p(-np.minimum(one_minus_l1, 1.0)),
                              np.log(np.abs(l1)))
            log_l2 = np.log(np.abs(l2))
        log_m = math.log(m)
        r = real
        coef = np.concatenate([half_h[r] * c1[r], half_h[r] * c2[r], half_h[r] * c3[r]])
        logs = np.concatenate([2 * log_l1[r], 2 * log_l2[r], np.full(int(r.sum()), log_m)])

        # Complex pair l, conj(l) with |l|^2 = m: q = c3 m^t + 2 Re(c1 l^(2t)).
        x = cplx
        s_im = np.sqrt(np.where(x, -disc, 1.0))
        lc = 0.5 * (tr[x] + 1j * s_im[x])
        dc2 = -(s_im[x] ** 2)  # (l1 - l2)^2 = (i sqrt(-disc))^2
        cc1 = (g11[x] + 2 * g12[x] / lc + g22[x] / lc ** 2) / dc2
        cc3 = ((-2 * g11[x] - 2 * g12[x] * tr[x] / m - 2 * g22[x] / m) / dc2).real
        self._set_terms(coef, logs, half_h[x] * cc3, half_h[x] * 2 * np.abs(cc1),
                        2 * np.angle(lc), np.angle(cc1))
        self._deg = None
        if deg.any():
            g = np.stack([g11[deg], g12[deg], g22[deg]])
            dd = disc[deg]
            rho = np.where(dd > 0, 0.5 * (np.abs(tr[deg]) + np.sqrt(np.maximum(dd, 0.0))),
                           math.sqrt(m))  # spectral radius of A
            dmat = np.stack([dxx[deg], dxu[deg], duu[deg]])
            self._deg = (half_h[deg], g, tr[deg], dd, rho, dmat)

    def _set_terms(self, coef: np.ndarray, logs: np.ndarray, ccoef: np.ndarray,
                   camp: np.ndarray, cphase: np.ndarray, cshift: np.ndarray) -> None:
        # Exact evaluation: real terms coef * exp(t logs); complex directions
        # ccoef m^t + camp m^t cos(t cphase + cshift).
        self._coef, self._logs = coef, logs
        self._ccoef, self._camp, self._cphase, self._cshift = ccoef, camp, cphase, cshift
        # Lower bounds: every term as (coefficient, log base), split by sign.
        bc = np.concatenate([coef, ccoef - camp])
        bl = np.concatenate([logs, np.full(len(ccoef), math.log(self.m) if self.m > 0 else 0.0)])
        self._pos_c, self._pos_l = bc[bc >= 0], bl[bc >= 0]
        self._neg_c, self._neg_l = bc[bc < 0], bl[bc < 0]

    # -- near-degenerate directions --------------------------------------------------------

    def _u(self, t: np.ndarray, tr: np.ndarray, disc: np.ndarray) -> np.ndarray:
        """U_t (t >= 0), stably near l1 = l2.

        With l1,2 = L (1 +- e), L = tr/2: U_t = sign(L)^t t (atanh(e) / (e |L|)) m^(t/2)
        sinhc(t w), w = atanh(e), sinhc(x) = sinh(x)/x -- no 0/0 at e = 0 (U_t = t L^(t-1)).
        """
        half = 0.5 * tr
        e = np.sqrt(disc.astype(complex)) / 2 / half
        small_e = np.abs(e) < 1e-8
        w = np.arctanh(e)
        atanhc = np.where(small_e, 1 + e * e / 3, w / np.where(small_e, 1, e))
        tw = t * w
        c = 0.5 * math.log(self.m) * t
        small = np.abs(tw) < 1.0
        with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
            sinhc = np.where(np.abs(tw) < 1e-8, 1 + tw * tw / 6, np.sinh(tw) / tw)
            direct = np.exp(c) * sinhc
            split = 0.5 * (np.exp(c + tw) - np.exp(c - tw)) / tw
            val = t * atanhc / np.abs(half) * np.where(small, direct, split)
        sign = np.where(half < 0, (-1.0) ** (t % 2), 1.0)
        return (sign * val).real

    def _deg_q(self, t: np.ndarray) -> np.ndarray:
        """Sum over near-degenerate directions of 1/2 h q(t), for each t (t >= 1)."""
        hh, g, tr, disc, _, _ = self._deg  # type: ignore[misc]
        t = np.asarray(t, dtype=np.float64)[:, None]
        ut, ut1 = self._u(t, tr, disc), self._u(t - 1, tr, disc)
        q = g[0] * ut ** 2 + 2 * g[1] * ut * ut1 + g[2] * ut1 ** 2
        return q @ hh

    def _deg_bound(self, t0: int, t1: int) -> float:
        """A lower bound of the near-degenerate directions' part of L on [t0, t1] (t0 >= 1).

        q = Dxx r1^2 + 2 Dxu r1 r2 + Duu r2^2 with r1 = U_{t+1} - m U_t, r2 = m U_t (the row
        e_x' A^t). Dropping the term Dxx r1^2 when it is >= 0 and bounding the rest through
        |U_t| <= t rho^(t-1) (t rho^t is unimodal) gives the bound.
        """
        hh, _, _, _, rho, dmat = self._deg  # type: ignore[misc]
        peak = -1.0 / np.log(rho)

        def umax(lo: float, hi: float) -> np.ndarray:  # max of t rho^(t-1) on [lo, hi]
            s = np.clip(peak, lo, hi)
            return s * rho ** (s - 1)

        r2 = self.m * umax(t0, t1)
        r1 = umax(t0 + 1, t1 + 1) + r2
        dxx, dxu, duu = dmat
        worst = np.minimum(dxx, 0.0) * r1 * r1 - 2 * np.abs(dxu) * r1 * r2 - np.abs(duu) * r2 * r2
        return float(hh @ worst)

    # -- the loss and its bounds -----------------------------------------------------------

    def loss(self, t: np.ndarray | int) -> np.ndarray:
        """Expected loss at step(s) ``t`` (exact up to floating point)."""
        ts = np.atleast_1d(np.asarray(t, dtype=np.int64))
        out = np.full(len(ts), np.inf if self.diverged else self.loss_star)
        if self.diverged:
            return out
        for j in range(0, len(ts), 64):  # chunks keep the temporaries small
            tt = ts[j:j + 64].astype(np.float64)[:, None]
            with np.errstate(under="ignore", invalid="ignore"):
                v = np.exp(tt * self._logs) @ self._coef
                if len(self._ccoef):
                    mt = np.exp(tt * math.log(self.m))
                    v = v + (mt * (self._ccoef + self._camp * np.cos(
                        tt * self._cphase + self._cshift))).sum(axis=1)
            v = np.where(ts[j:j + 64] == 0, self.loss0 - self.loss_star, v)
            if self._deg is not None:
                pos = ts[j:j + 64] > 0
                if pos.any():
                    v[pos] += self._deg_q(ts[j:j + 64][pos])
            out[j:j + 64] += v
        return out

    def lower_bound(self, t0: int, t1: int) -> float:
        """A certified lower bound of L(t) for all integers t in [t0, t1], t0 >= 1."""
        self.bound_evals += 1
        with np.errstate(under="ignore", invalid="ignore"):
            lb = self.loss_star + float(self._pos_c @ np.exp(t1 * self._pos_l)) + float(
                self._neg_c @ np.exp(t0 * self._neg_l))
        if self._deg is not None:
            lb += self._deg_bound(t0, t1)
        # rounding in the sums: stay on the safe side
        return lb - 1e-12 * (abs(lb) + self.loss0)

    def first_hit(self, target: float, max_steps: int) -> int | None:
        """The smallest t in [0, max_steps] with L(t) <= target, or None (see module doc)."""
        if self.diverged:
            return None
        if self.loss0 <= target:
            return 0
        lo = 1
        while lo <= max_steps:
            hi = min(2 * lo - 1, max_steps)
            if self.lower_bound(lo, hi) <= target:
                hit = self._search(lo, hi, target)
                if hit is not None:
                    return hit
            lo = hi + 1
        return None

    def _search(self, lo: int, hi: int, target: float) -> int | None:
        stack = [(lo, hi)]
        while stack:
            if self.bound_evals > MAX_BOUND_EVALS:
                raise RuntimeError(f"NQM search did not settle after {MAX_BOUND_EVALS} bounds")
            a, b = stack.pop()
            if a == b:
                if self.loss(a)[0] <= target:
                    return a
                continue
            mid = (a + b) // 2
            # right half below the left on the stack, so the left is searched first
            for c, d in ((mid + 1, b), (a, mid)):
                if self.lower_bound(c, d) <= target:
                    stack.append((c, d))
        return None


def iterate(h: np.ndarray, lr: float, one_minus_momentum: float | None, batch_size: int,
            p: float, steps: int) -> np.ndarray:
    """Brute force: L(0..steps) by applying the per-direction second-moment recursion step by
    step (DESIGN.md's 3x3 matrix). For tests: O(K x steps)."""
    m = 0.0 if one_minus_momentum is None else 1.0 - one_minus_momentum
    a = lr * h ** (1.0 - p)
    n = lr * lr * h ** (-2.0 * p) * h / batch_size
    xx, uu, xu = np.ones_like(h), np.zeros_like(h), np.zeros_like(h)
    out = [0.5 * h @ xx]
    for _ in range(steps):
        xx, uu, xu = ((1 - a) ** 2 * xx + m * m * uu + 2 * m * (1 - a) * xu + n,
                      a * a * xx + m * m * uu - 2 * m * a * xu + n,
                      -a * (1 - a) * xx + m * m * uu + m * (1 - 2 * a) * xu + n)
        out.append(0.5 * h @ xx)
    return np.array(out)


class NQM(Workload):
    """The noisy quadratic model: each trial's steps-to-target computed exactly, in milliseconds."""

    name = "nqm"
    Options = NQMOptions
    metrics: ClassVar[dict[str, str]] = {"loss": "minimize"}
    buffered: ClassVar[bool] = True

    def __init__(self, options: NQMOptions | None = None) -> None:
        super().__init__(options)
        self._h: np.ndarray | None = None

    def check_options(self) -> list[tuple[str, str]]:
        """Problems with the options, as (key, message)."""
        o = self.options
        if o.dimensions < 1:
            return [("dimensions", f"{o.dimensions}; allowed: a positive integer")]
        if not 0.0 <= o.precondition_power < 1.0:
            return [("precondition_power", f"{o.precondition_power}; allowed: [0, 1)")]
        return []

    def check_metaparameters(self, optimizer: str, schedule: str, fixed: dict,
                             searched: set[str]) -> list[tuple[str, str]]:
        """The closed form covers SGD and heavy-ball momentum at a constant rate, no decay."""
        if optimizer not in ("sgd", "momentum"):
            return [("optimizer.name", f"{optimizer!r}: the NQM solves sgd and momentum")]
        if schedule != "constant":
            return [("optimizer.schedule", f"{schedule!r}: the NQM solves a constant rate")]
        if "weight_decay" in searched or fixed.get("weight_decay", 0.0) != 0.0:
            return [("optimizer.weight_decay", "the NQM has no weight decay; allowed: 0")]
        return []

    def num_train_examples(self) -> int:
        """The NQM has no data set (so no budget in epochs)."""
        return 0

    def curvatures(self) -> np.ndarray:
        """h_i = 1/i, computed once."""
        if self._h is None:
            self._h = spectrum(self.options.dimensions)
        return self._h

    def dynamics(self, req: TrialRequest) -> Dynamics:
        """The closed form for one trial's metaparameters."""
        omm = req.params.get("one_minus_momentum") if req.optimizer == "momentum" else None
        return Dynamics(self.curvatures(), float(req.params["learning_rate"]), omm,
                        req.batch_size, self.options.precondition_power)

    def run(self, req: TrialRequest, report: Reporter) -> TrialResult:
        """Exact steps-to-target; the curve is L at the study's evaluation steps up to it.

        An unstable step size (an eigenvalue of A on or outside the unit circle) is "diverged"
        before the first step; a loss above ``divergence_factor`` x L(0) at an evaluation, too.
        """
        started = time.perf_counter()
        dyn = self.dynamics(req)
        result = TrialResult(reached=False, steps_to_target=None, stopped_at_step=0,
                             diverged=dyn.diverged, pruned=False, examples_seen=0,
                             wall_seconds=0.0, best_metric=None, device="cpu (closed form)")
        if not dyn.diverged:
            hit = dyn.first_hit(req.target.value, req.max_steps)
            end = hit if hit is not None else req.max_steps
            steps = [s for s in req.eval_steps if s < end] + [end]
            result.stopped_at_step = end
            for s, value in zip(steps, dyn.loss(np.array(steps))):
                metrics = {"loss": float(value)}
                if not value <= req.divergence_factor * dyn.loss0:
                    result.diverged, result.stopped_at_step = True, s
                    break
                result.curve.append((s, metrics))
                if report(s, metrics) and s != hit:
                    result.pruned, result.stopped_at_step = True, s
                    break
            if hit is not None and not (result.pruned or result.diverged):
                result.reached, result.steps_to_target, result.steps_after = True, hit, hit - 1
            result.best_metric = min((m["loss"] for _, m in result.curve), default=None)
        result.examples_seen = result.stopped_at_step * req.batch_size
        result.wall_seconds = time.perf_counter() - started
        return result
