"""The noisy quadratic model (Zhang et al. 2019) as docs/DESIGN.md defines it, solved exactly.

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

With an exponential moving average of the iterates (option ``ema`` = beta > 0; x~0 = x0,
x~' = beta x~ + (1 - beta) x', the loss measured at x~), z = (x, u, x~) follows a 3x3 recursion
with eigenvalues l1, l2, beta, and q(t) = E x~^2(t) - S has six geometric modes
(:meth:`Dynamics._ema`).

Steps-to-target, exactly: the smallest integer t with L(t) <= target. L need not be monotone
(momentum oscillates; noise can make a direction's second moment grow toward its steady state),
so we search with certified lower bounds. On an interval [t0, t1] every geometric term with a
real base in [0, 1) is monotone, so its minimum is at an end; an oscillation A rho^t cos(t phi +
psi) is at least -A rho^t0 if a trough of the cosine falls in the interval, else its smaller end;
close pairs have unimodal or enveloped forms (workloads/nqm_terms.py). Summing the minima gives
LB(t0, t1) <= min L on the interval (a "fine" bound, term by term; a "coarse" one from
aggregates, also certified, is tried first where the fine one is costly). The search walks
doubling blocks [1, 1], [2, 3], [4, 7], ... left to right (trying 8x longer blocks first while
far from the target), skips any block with LB > target, and bisects the others depth-first, left
half first. An interval of at most ``WINDOW`` steps (and at most 4x its first step) is not
bisected further: a window encloses L at all its steps at once, L(t) in [v_t - e, v_t + e] with
a certified e (Taylor groups of nearby rates; oscillations gridded onto FFT frequencies), and
the first step not certainly above the target is the answer if certainly below it, else
evaluated exactly (those within e of the target; e ~ 1e-10 x the terms' size). Everything
skipped provably stays above the target, and every step left of the answer was skipped,
enclosed above the target or evaluated, so the answer is the smallest such t (up to rounding
in L itself, ~1e-15 relative, as for any evaluation of L).

Near-degenerate directions (l1 ~ l2, critical damping), where the three-term expansion cancels
catastrophically, are evaluated through stable forms of U_t (sinh / sin of t ell over ell).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
from threadpoolctl import ThreadpoolController

from tuner.core.branching import LR_RULES, Branch, Checkpoint, LocalCBS
from tuner.core.errors import UsageError
from tuner.core.predict import NoiseScale, finish
from tuner.workload import Reporter, TrialRequest, TrialResult, Workload
from workloads.nqm_terms import (
    TINY,
    UNDERFLOW,
    Bracket,
    Close,
    Exponentials,
    Oscillations,
    Stepped,
    real_values,
)

#: Intervals of at most this many steps (and at most 4 x their first step) are not bisected
#: further: all their steps are enclosed at once by a Taylor-group window (nqm_terms.py).
WINDOW = 2048
#: Half-width, relative to the size of the terms, of the band around the target inside which
#: a window's enclosure is not trusted and the step is evaluated exactly.
BAND = 1e-10
#: The coarse bound (from aggregates) is tried before the fine one where the fine one would bound
#: more than this many terms one by one.
COARSE_FIRST = 256
#: EMA: directions whose modal coefficients sum (in absolute value) to more than this many times
#: the largest entry of their D = Sigma_0 - Sigma* (the scale of q at small t) are evaluated by
#: exact matrix powers instead.
COND_MAX = 1e4
#: How the NQM's noise scale is computed (NQM.noise_scale), in words.
EXACT = ("exact (closed form): E|G|^2 = sum h_i^2 E x_i^2(t) from the second-moment "
         "recursion, tr(Sigma) = sum h_i (per-example noise covariance H)")
#: How the NQM's branches are computed (NQM.branch), in words.
BRANCHED = ("exact (closed form): expected losses from the second-moment recursion, carried "
            "from the reference run into each branch")
#: Window products are small matrices: one BLAS thread (no waiting on a descheduled second one).
_BLAS = ThreadpoolController()


@dataclass
class NQMOptions:
    """Options of the ``nqm`` workload."""

    dimensions: int = 10_000  # K: h_i = 1/i, i = 1..K
    precondition_power: float = 0.0  # p: preconditioner H^-p, 0 <= p < 1
    ema: float = 0.0  # beta: loss at x~' = beta x~ + (1 - beta) x' (x~0 = x0); 0: at x itself


def _sinc_series(x: np.ndarray, hyperbolic: bool) -> np.ndarray:
    """sinh(x)/x (or sin(x)/x) for |x| <= 0.1 by its series to x^10 (next term < 2e-22)."""
    y = x * x if hyperbolic else -x * x
    return 1 + y / 6 * (1 + y / 20 * (1 + y / 42 * (1 + y / 72 * (1 + y / 110))))


def spectrum(k: int) -> np.ndarray:
    """Curvatures h_i = 1/i, i = 1..k."""
    return 1.0 / np.arange(1, k + 1, dtype=np.float64)


class Dynamics:
    """Closed-form expected loss of SGD / heavy-ball momentum on the NQM, with certified bounds.

    Every direction's transient q_i(t) = E x_i^2(t) - S_xx,i falls in one of these forms, and
    L(t) = L* + sum_i h_i q_i(t) / 2 is kept as families of terms (workloads/nqm_terms.py):

    * plain SGD: c (1 - a)^(2t), one monotone term (:class:`Exponentials`);
    * momentum, eigenvalues apart, real: c1 l1^(2t) + c2 l2^(2t) + c3 m^t, the first two
      :class:`Exponentials`;
    * momentum, complex pair: c3 m^t + A m^t cos(t phi + psi) (:class:`Oscillations`, with the
      shared modulus m^t);
    * momentum, eigenvalues close (|ell| = |log(l1/l2)| < 0.05 if real, < 1e-3 if complex;
      critical damping included), where the form above cancels catastrophically:
      m^t (P + b1 S(t) + b2 C(t)) (:class:`Close`), P, b1, b2 solved from the exact q(0), q(1),
      q(2);
    * with an exponential moving average of the iterates (``ema`` = beta > 0), see
      :meth:`_ema`.

    Terms sharing a modulus (all c3 m^t and P m^t; with EMA also beta^(2t) and (beta sqrt m)^t)
    are kept as :class:`Bracket` s, their constant parts summed into one coefficient.
    """

    def __init__(self, h: np.ndarray, lr: float, one_minus_momentum: float | None,
                 batch_size: int, p: float = 0.0, ema: float = 0.0) -> None:
        omm = 1.0 if one_minus_momentum is None else float(one_minus_momentum)
        m = 1.0 - omm
        self.m = m
        a = lr * h ** (1.0 - p)
        n = lr * lr * h ** (-2.0 * p) * h / batch_size
        self.loss0 = 0.5 * float(h.sum())  # E x0^2 = 1 (and x~0 = x0)
        # Stable iff both eigenvalues of A lie inside the unit circle: 0 < a < 2 (1 + m).
        self.diverged = bool(np.any(a >= 2.0 * (1.0 + m)))
        self.bound_evals = self.windows = 0
        self.brackets: list[Bracket] = []
        self.stepped: Stepped | None = None
        if self.diverged:
            return
        hh = 0.5 * h
        if ema > 0.0:
            self._ema(hh, a, n, m, omm, ema)
        elif m == 0.0:
            sxx = n / (a * (2.0 - a))
            self.loss_star = float(hh @ sxx)
            with np.errstate(divide="ignore"):  # a == 1: the term is 0 for t >= 1
                self.pool = Exponentials(hh * (1.0 - sxx), 2.0 * np.log(np.abs(1.0 - a)))
        else:
            self._momentum(hh, a, n, m, omm)
        # only monotone exponentials (SGD): bisection with their exact bounds down to single
        # steps costs less than setting up a window
        self._pure = not self.brackets and self.stepped is None
        self._safety = 1e-14 * (float(np.abs(self.pool.c).sum())
                                + sum(abs(b.coef) + sum(o.total for o in b.oscs)
                                      for b in self.brackets))

    @staticmethod
    def _steady_momentum(a: np.ndarray, n: np.ndarray, m: float,
                         omm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steady E x^2, E u^2, E xu of heavy-ball momentum (m = 0: plain SGD)."""
        k = 2.0 * (1.0 + m) - a
        return n * (1.0 + m) / (a * omm * k), 2.0 * n / (omm * k), n / (omm * k)

    @staticmethod
    def _eigen(a: np.ndarray, m: float, omm: float) -> tuple[np.ndarray, np.ndarray]:
        """tr = l1 + l2 and the discriminant tr^2 - 4m of A = [[1-a, m], [-a, m]], the latter
        written to avoid cancelling O(1) terms when a and 1 - m are small."""
        return 1.0 - a + m, omm * omm - 2.0 * a * (1.0 + m) + a * a

    def _momentum(self, hh: np.ndarray, a: np.ndarray, n: np.ndarray, m: float,
                  omm: float) -> None:
        lm = math.log(m)
        sxx, suu, sxu = self._steady_momentum(a, n, m, omm)
        self.loss_star = float(hh @ sxx)
        dxx, duu, dxu = 1.0 - sxx, -suu, -sxu
        g11 = (1 - a) ** 2 * dxx + 2 * (1 - a) * m * dxu + m * m * duu
        g12 = -m * ((1 - a) * dxx + m * dxu)
        g22 = m * m * dxx
        tr, disc = self._eigen(a, m, omm)
        ratio = np.sqrt(np.abs(disc)) / np.maximum(np.abs(tr), 1e-300)
        # |ell| = |log(l1/l2)| = 2 atanh(ratio) (real), theta = arg(l1/l2) = 2 atan(ratio).
        # Real pairs with |ell| < 0.05 use the (P, S, C) form, whose unimodal terms bound tightly
        # where the three exponentials would nearly cancel.
        # Complex pairs use it only when the rotation theta is tiny (cancellation in c1, c3);
        # otherwise the exact sinusoid's trough-aware bound is the tighter one.
        close = np.where(disc > 0, ratio < math.tanh(0.025), ratio < math.tan(5e-4))
        real, cplx = (disc > 0) & ~close, (disc <= 0) & ~close
        c_m = 0.0
        oscs: list[Oscillations] = []
        closes: list[Close] = []

        # Far apart, real: l1 (larger magnitude, no cancellation) and l2 = m / l1.
        r = real
        sq = np.sqrt(disc[r])
        l1 = 0.5 * (tr[r] + np.copysign(sq, tr[r]))
        l2 = m / l1
        d2 = disc[r]  # (l1 - l2)^2
        c1 = (g11[r] + 2 * g12[r] / l1 + g22[r] / l1 ** 2) / d2
        c2 = (g11[r] + 2 * g12[r] / l2 + g22[r] / l2 ** 2) / d2
        c3 = (-2 * g11[r] - 2 * g12[r] * tr[r] / m - 2 * g22[r] / m) / d2
        one_minus_l1 = 2.0 * a[r] / (a[r] + omm + sq)  # 1 - l1 without cancellation (tr > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_l1 = np.where(tr[r] > 0, np.log1p(-np.minimum(one_minus_l1, 1.0)),
                              np.log(np.abs(l1)))
            log_l2 = np.log(np.abs(l2))
        self.pool = Exponentials(np.r_[hh[r] * c1, hh[r] * c2], np.r_[2 * log_l1, 2 * log_l2])
        c_m += float(hh[r] @ c3)

        # Far apart, complex pair l, conj(l), |l|^2 = m: q = c3 m^t + 2 Re(c1 l^(2t)).
        x = cplx
        if x.any():
            lc = 0.5 * (tr[x] + 1j * np.sqrt(-disc[x]))
            dc2 = disc[x]
            cc1 = (g11[x] + 2 * g12[x] / lc + g22[x] / lc ** 2) / dc2
            cc3 = ((-2 * g11[x] - 2 * g12[x] * tr[x] / m - 2 * g22[x] / m) / dc2).real
            oscs.append(Oscillations(hh[x] * 2 * np.abs(cc1), 2 * np.angle(lc), np.angle(cc1)))
            c_m += float(hh[x] @ cc3)

        # Close: m^t (P + b1 S + b2 C), from q(0) = Dxx, q(1) = g11,
        # q(2) = g11 tr^2 + 2 g12 tr + g22.
        for is_real in (True, False):
            sel = close & ((disc > 0) if is_real else (disc <= 0))
            if not sel.any():
                continue
            e = 2.0 * (np.arctanh(ratio[sel]) if is_real else np.arctan(ratio[sel]))
            # S(t) = t f(t ell), C(t) = t^2 f(t ell / 2)^2, f = sinh(x)/x or sin(x)/x, |x| <= 0.1
            f1, f2, f_half = (_sinc_series(x, is_real) for x in (e, 2 * e, e / 2))
            s_1, s_2, c_1, c_2 = f1, 2 * f2, f_half ** 2, 4 * f1 ** 2
            q0 = dxx[sel]
            q1 = g11[sel]
            q2 = g11[sel] * tr[sel] ** 2 + 2 * g12[sel] * tr[sel] + g22[sel]
            r1, r2 = q1 / m - q0, q2 / (m * m) - q0
            det = s_1 * c_2 - s_2 * c_1
            b1 = (r1 * c_2 - r2 * c_1) / det
            b2 = (s_1 * r2 - s_2 * r1) / det
            closes.append(Close(hh[sel] * b1, hh[sel] * b2, e, is_real, lm))
            c_m += float(hh[sel] @ q0)
        self.brackets = [Bracket(lm, c_m, oscs, closes)]

    def _ema(self, hh: np.ndarray, a: np.ndarray, n: np.ndarray, m: float, omm: float,
             beta: float) -> None:
        """Momentum m (0: SGD) with the loss at x~, x~' = beta x~ + (1 - beta) x', x~0 = x0.

        Per direction z = (x, u, x~) follows z' = B z - (1, 1, 1 - beta) xi with
        B = [[1-a, m, 0], [-a, m, 0], [(1-beta)(1-a), (1-beta) m, beta]], whose eigenvalues are
        l1, l2 (those of A) and beta. E x~^2(t) = S + r(t) D r(t)' with r(t) = e3' B^t,
        D = Sigma_0 - Sigma*, and, in closed form (no numerical eigensolver),
        r(t) = sum over mu in {l1, l2, beta} of mu^t g_mu with
        g_l = ((1 - beta) l pi_l / (l - beta), 0), pi_l1 = (l1 - m, m)/(l1 - l2),
        pi_l2 = -(l2 - m, m)/(l1 - l2) (so that e1' A^k = sum_l l^k pi_l), and
        g_beta = (-(g_l1 + g_l2), 1). So q(t) = r D r' has six modes, l1^2, l2^2, l1 l2 = m,
        beta^2, beta l1, beta l2, with coefficients g D g'. Real modes are
        :class:`Exponentials`; for a complex pair l1^2 and beta l1 (with their conjugates) are
        oscillations of moduli m and beta sqrt(m); m^t and beta^(2t) are shared. Where the
        coefficients would cancel badly (sum |coefficients| > ``COND_MAX`` x max |D|: two of
        l1, l2, beta nearly equal) or a mode alternates in sign (negative real eigenvalues),
        the direction is evaluated by exact powers of B instead (:class:`Stepped`).
        """
        tr, disc = self._eigen(a, m, omm)
        sxx, suu, sxu = self._steady_momentum(a, n, m, omm)
        # steady E x x~, E u x~ (a 2x2 system, determinant (1 - beta l1)(1 - beta l2) > 0), E x~^2
        det = 1.0 - beta * tr + beta * beta * m
        rx, ru = (1 - beta) * sxx, (1 - beta) * sxu
        sxe = (rx * (1 - beta * m) + beta * m * ru) / det
        sue = ((1 - beta * (1 - a)) * ru - beta * a * rx) / det
        see = (2 * beta * (1 - beta) * ((1 - a) * sxe + m * sue)
               + (1 - beta) ** 2 * sxx) / (1 - beta * beta)
        self.loss_star = float(hh @ see)
        d = np.empty((len(a), 3, 3))
        d[:, 0, 0], d[:, 1, 1], d[:, 2, 2] = 1 - sxx, -suu, 1 - see
        d[:, 0, 1] = d[:, 1, 0] = -sxu
        d[:, 0, 2] = d[:, 2, 0] = 1 - sxe
        d[:, 1, 2] = d[:, 2, 1] = -sue

        real = disc > 0
        sq = np.sqrt(np.abs(disc))
        sign = np.where(tr >= 0, 1.0, -1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            l1 = np.where(real, 0.5 * (tr + sign * sq), 0.5 * (tr + 1j * sq))
            l2 = np.where(real, m / l1, np.conj(l1))
            diff = np.where(real, sign * sq, 1j * sq)
            g = []
            for l, pi in ((l1, np.stack([l1 - m, np.full(len(a), m)]) / diff),
                          (l2, -np.stack([l2 - m, np.full(len(a), m)]) / diff)):
                g.append(np.vstack([(1 - beta) * l * pi / (l - beta), np.zeros(len(a))]))
            g.append(np.vstack([-(g[0][:2] + g[1][:2]), np.ones(len(a))]))

            def form(x: np.ndarray, y: np.ndarray) -> np.ndarray:
                return np.einsum("in,nij,jn->n", x, d, y)

            g1, g2, gb = g
            coef = {"11": form(g1, g1), "22": form(g2, g2), "12": 2 * form(g1, g2),
                    "bb": form(gb, gb), "b1": 2 * form(gb, g1), "b2": 2 * form(gb, g2)}
            size = sum(np.abs(c) for c in coef.values())
            # relative to the scale of q at small t (r(t) ~ 1): also catches nan
            stepped = ~(size <= COND_MAX * np.abs(d).max(axis=(1, 2)))
            stepped |= real & (tr <= 0)  # negative (or zero) real eigenvalues
        if stepped.any():
            b = np.zeros((int(stepped.sum()), 3, 3))
            aa = a[stepped]
            b[:, 0, 0], b[:, 0, 1] = 1 - aa, m
            b[:, 1, 0], b[:, 1, 1] = -aa, m
            b[:, 2, 0], b[:, 2, 1], b[:, 2, 2] = (1 - beta) * (1 - aa), (1 - beta) * m, beta
            modes = np.stack([coef[k][stepped] for k in ("11", "22", "12", "bb", "b1", "b2")], 1)
            r1, r2 = np.abs(l1[stepped]), np.abs(l2[stepped])
            with np.errstate(divide="ignore"):
                rates = np.log(np.stack([r1 * r1, r2 * r2, np.full(len(r1), m),
                                         np.full(len(r1), beta * beta), beta * r1, beta * r2], 1))
            self.stepped = Stepped(b, d[stepped], hh[stepped], see[stepped], modes, rates)
        keep = ~stepped
        lb = math.log(beta)
        r, x = keep & real, keep & ~real
        with np.errstate(divide="ignore"):  # m = 0: l2 = 0, its modes vanish from t = 1
            # 1 - l1 without cancellation where tr > 0 (as for momentum)
            log_l1 = np.log1p(-2.0 * a[r] / (a[r] + omm + sq[r]))
            log_l2 = (math.log(m) if m > 0 else -math.inf) - log_l1
        w = hh[r]
        self.pool = Exponentials(
            np.r_[w * coef["11"][r].real, w * coef["22"][r].real, w * coef["b1"][r].real,
                  w * coef["b2"][r].real],
            np.r_[2 * log_l1, 2 * log_l2, lb + log_l1, lb + log_l2])
        c_bb = float(hh[keep] @ coef["bb"][keep].real)
        self.brackets = [Bracket(2 * lb, c_bb)]
        if m > 0:
            lm = math.log(m)
            c_m = float(hh[keep] @ coef["12"][keep].real)
            oscs = []
            if x.any():
                w, l = hh[x], l1[x]
                oscs.append(Oscillations(2 * w * np.abs(coef["11"][x]), 2 * np.angle(l),
                                         np.angle(coef["11"][x])))
                self.brackets.append(Bracket(lb + lm / 2, 0.0, [Oscillations(
                    2 * w * np.abs(coef["b1"][x]), np.angle(l), np.angle(coef["b1"][x]))]))
            self.brackets.insert(0, Bracket(lm, c_m, oscs))

    # -- the loss and its bounds -----------------------------------------------------------

    def loss(self, t: np.ndarray | int) -> np.ndarray:
        """Expected loss at step(s) ``t`` (exact up to floating point)."""
        ts = np.atleast_1d(np.asarray(t, dtype=np.int64))
        out = np.full(len(ts), np.inf if self.diverged else self.loss_star)
        if self.diverged:
            return out
        out[ts == 0] = self.loss0
        pos = np.flatnonzero(ts > 0)
        for j in range(0, len(pos), 64):  # chunks keep the temporaries small
            idx = pos[j:j + 64]
            tt = ts[idx].astype(np.float64)
            with np.errstate(under="ignore", invalid="ignore"):
                v = self.pool.values(tt)
                for br in self.brackets:
                    part = np.full(len(tt), br.coef)
                    for osc in br.oscs:
                        part += osc.values(tt)
                    v += np.exp(tt * br.log_rho) * part
                    for fam in br.closes:
                        v += fam.values(tt)
                if self.stepped is not None:
                    v += self.stepped.values(tt)
            out[idx] += v
        return out

    def _bound(self, t0: int, t1: int, fine: bool) -> float:
        """A certified lower bound of L(t) for all integers t in [t0, t1], t0 >= 1: term by term
        (``fine``) or from aggregates (coarse). A bracket rho^t (c + oscillations) is bounded
        as (c + their minimum) rho^(t1 if that is >= 0 else t0)."""
        self.bound_evals += 1
        with np.errstate(under="ignore", invalid="ignore", over="ignore", divide="ignore"):
            lb = self.loss_star + (self.pool.lower(t0, t1) if fine else self.pool.coarse(t0, t1))
            for br in self.brackets:
                c = br.coef
                for fam in br.closes:
                    if fine:
                        part, extra = fam.lower(t0, t1)
                        lb, c = lb + part, c + extra
                    else:
                        lb += fam.coarse(t0, t1)
                for osc in br.oscs:
                    c += osc.lower(t0, t1) if fine else osc.coarse()
                lb += c * math.exp((t1 if c >= 0 else t0) * br.log_rho)
            if self.stepped is not None:
                lb += self.stepped.lower(t0)
        # rounding in the sums: stay on the safe side
        return lb - 1e-12 * (abs(lb) + self.loss0) - self._safety

    def _excluded(self, t0: int, t1: int, target: float) -> bool:
        """Whether L(t) > target provably for all t in [t0, t1]: the coarse bound first where
        the fine one is costly (many terms to bound one by one), then the fine one."""
        if self._coarse_first(t0) and self._bound(t0, t1, fine=False) > target:
            return True
        return self._bound(t0, t1, fine=True) > target

    def _coarse_first(self, t0: int) -> bool:
        """Worth trying the coarse bound first? Not for plain exponentials (SGD): their fine
        bound is two sums of exponentials already."""
        return not self._pure and self._fine_cost(t0) > COARSE_FIRST

    def _fine_cost(self, t0: int) -> int:
        """How many terms the fine bound at t0 handles one by one."""
        return len(self.pool) + sum(sum(len(o) for o in br.oscs)
                                    + sum(f.fine_cost(t0) for f in br.closes)
                                    for br in self.brackets)

    def first_hit(self, target: float, max_steps: int) -> int | None:
        """The smallest t in [0, max_steps] with L(t) <= target, or None (see module doc)."""
        if self.diverged:
            return None
        if self.loss0 <= target:
            return 0
        lo, gallop = 1, True
        while lo <= max_steps:
            # far from the target a block 8 x longer is often excluded at once by the coarse
            # bound; once it is not, the target is near: doubling blocks from there on
            hi = min(8 * lo - 1, max_steps)
            if gallop and hi > 2 * lo - 1:
                if self._bound(lo, hi, fine=not self._coarse_first(lo)) > target:
                    lo = hi + 1
                    continue
                gallop = False
            hi = min(2 * lo - 1, max_steps)
            if not self._excluded(lo, hi, target):
                hit = self._search(lo, hi, target)
                if hit is not None:
                    return hit
            lo = hi + 1
        return None

    def _search(self, lo: int, hi: int, target: float) -> int | None:
        """Depth-first, left half first; an interval's bound is computed when it is popped (a
        right half is never bounded if the left one holds the answer)."""
        stack = [(lo, hi, False)]
        while stack:
            a, b, bound = stack.pop()
            if bound and self._excluded(a, b, target):
                continue
            if b - a + 1 <= (1 if self._pure else min(WINDOW, 4 * a)):
                hit = self.scan(a, b, target)
                if hit is not None:
                    return hit
                continue
            mid = (a + b) // 2
            stack += [(mid + 1, b, True), (a, mid, True)]
        return None

    def enclose(self, t: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """L at steps t .. t + w - 1 (w <= 4 t) to within the returned error bounds, from
        Taylor groups (workloads/nqm_terms.py): O(w x groups) instead of O(w x K)."""
        centres, coef, err, scale = self.pool.window(t, w)
        v = self.loss_star + real_values(centres, coef, w)
        steps = np.arange(w)
        for br in self.brackets:
            c = br.coef
            rho_t = math.exp(max(t * br.log_rho, -UNDERFLOW))
            rho_s = np.exp(np.maximum(steps * br.log_rho, -UNDERFLOW))
            for fam in br.closes:  # their values carry rho^t themselves (in stable forms)
                poly, e, size, extra, far = fam.window(t, w)
                v += rho_s * np.polynomial.polynomial.polyval(steps / w, poly)
                err, scale, c = err + e, scale + size, c + extra
                for centres, coef, e, size in far:
                    v += real_values(centres, coef, w)
                    err, scale = err + e, scale + size
            size = (abs(c) + sum(o.total for o in br.oscs)) * rho_t
            if size < TINY:  # below any loss's resolution (and subnormal): into the error bound
                err += size
                continue
            for osc in br.oscs:
                part, e, size = osc.window(t, w)
                v += rho_t * rho_s * part
                err, scale = err + e * rho_t, scale + size * rho_t
            v += c * rho_t * rho_s
            scale += abs(c) * rho_t
        if self.stepped is not None:
            v += self.stepped.window(t, w)
        return v, np.full(w, err + BAND * (scale + self.loss_star))

    def scan(self, a: int, b: int, target: float) -> int | None:
        """The first t in [a, b] with L(t) <= target, or None: all steps enclosed at once,
        steps within the error bound of the target evaluated exactly (a few steps: all)."""
        self.windows += 1
        if b - a < 8:
            v = self.loss(np.arange(a, b + 1))
            below = np.flatnonzero(v <= target)
            return a + int(below[0]) if len(below) else None
        with _BLAS.limit(limits=1, user_api="blas"), np.errstate(under="ignore"):
            v, err = self.enclose(a, b - a + 1)
        for s in np.flatnonzero(v - err <= target):
            if v[s] + err[s] <= target or self.loss(a + int(s))[0] <= target:
                return a + int(s)
        return None


def iterate(h: np.ndarray, lr: float, one_minus_momentum: float | None, batch_size: int,
            p: float, steps: int, ema: float = 0.0) -> np.ndarray:
    """Brute force: L(0..steps) by applying the per-direction second-moment recursion step by
    step (docs/DESIGN.md's 3x3 matrix; with ``ema`` = beta > 0, Sigma' = B Sigma B' + n g g' on
    (x, u, x~) with B, g as in :meth:`Dynamics._ema`). For tests: O(K x steps)."""
    m = 0.0 if one_minus_momentum is None else 1.0 - one_minus_momentum
    a = lr * h ** (1.0 - p)
    n = lr * lr * h ** (-2.0 * p) * h / batch_size
    if ema > 0.0:
        beta = ema
        b = np.zeros((len(h), 3, 3))
        b[:, 0, 0], b[:, 0, 1], b[:, 1, 0], b[:, 1, 1] = 1 - a, m, -a, m
        b[:, 2, 0], b[:, 2, 1], b[:, 2, 2] = (1 - beta) * (1 - a), (1 - beta) * m, beta
        g = np.array([1.0, 1.0, 1.0 - beta])
        q = n[:, None, None] * np.outer(g, g)
        sigma = np.zeros((len(h), 3, 3))
        sigma[:, 0, 0] = sigma[:, 0, 2] = sigma[:, 2, 0] = sigma[:, 2, 2] = 1.0
        out = [0.5 * h @ sigma[:, 2, 2]]
        bt = np.transpose(b, (0, 2, 1))
        for _ in range(steps):
            sigma = b @ sigma @ bt + q
            out.append(0.5 * h @ sigma[:, 2, 2])
        return np.array(out)
    xx, uu, xu = np.ones_like(h), np.zeros_like(h), np.zeros_like(h)
    out = [0.5 * h @ xx]
    for _ in range(steps):
        xx, uu, xu = ((1 - a) ** 2 * xx + m * m * uu + 2 * m * (1 - a) * xu + n,
                      a * a * xx + m * m * uu - 2 * m * a * xu + n,
                      -a * (1 - a) * xx + m * m * uu + m * (1 - 2 * a) * xu + n)
        out.append(0.5 * h @ xx)
    return np.array(out)


def moment_matrix(h: np.ndarray, lr: float, one_minus_momentum: float | None, batch_size: int,
                  p: float) -> np.ndarray:
    """One step of the per-direction affine recursion of docs/DESIGN.md on (E x^2, E u^2,
    E xu, 1) (what :func:`iterate` applies step by step) as a 4x4 matrix per direction, the
    noise in its last column."""
    m = 0.0 if one_minus_momentum is None else 1.0 - one_minus_momentum
    a = lr * h ** (1.0 - p)
    n = lr * lr * h ** (-2.0 * p) * h / batch_size
    mat = np.zeros((len(h), 4, 4))
    mat[:, 0, :] = np.stack([(1 - a) ** 2, np.full_like(a, m * m), 2 * m * (1 - a), n], 1)
    mat[:, 1, :] = np.stack([a * a, np.full_like(a, m * m), -2 * m * a, n], 1)
    mat[:, 2, :] = np.stack([-a * (1 - a), np.full_like(a, m * m), m * (1 - 2 * a), n], 1)
    mat[:, 3, 3] = 1.0
    return mat


def initial_moments(k: int) -> np.ndarray:
    """(E x0^2, E u0^2, E x0 u0, 1) per direction: x0 ~ N(0, I), u0 = 0."""
    v = np.zeros((k, 4, 1))
    v[:, 0, 0] = v[:, 3, 0] = 1.0
    return v


def second_moments(h: np.ndarray, lr: float, one_minus_momentum: float | None,
                   batch_size: int, p: float, steps: Sequence[int]) -> np.ndarray:
    """E x_i^2 at each of the increasing ``steps`` (one row each), exactly:
    :func:`moment_matrix` raised to each gap between steps by repeated squaring. The iterate
    x, not its moving average: the gradient is taken there."""
    mat = moment_matrix(h, lr, one_minus_momentum, batch_size, p)
    v = initial_moments(len(h))
    out, t = [], 0
    for s in steps:
        v = np.linalg.matrix_power(mat, s - t) @ v
        t = s
        out.append(v[:, 0, 0].copy())
    return np.array(out)


def branch_losses(h: np.ndarray, lr: float, one_minus_momentum: float | None, b0: int,
                  p: float, at: Sequence[int], factors: Sequence[int], lr_rule: str,
                  horizon: int) -> list[Checkpoint]:
    """Merrill et al.'s branches, exactly: the second moments of the reference run (``lr``
    at ``b0``) at each step in ``at``; from there, the reference ``horizon`` steps on, and a
    branch per factor k at k ``b0`` with the learning rate times ``LR_RULES[lr_rule](k)``,
    ``horizon / k`` steps on; the expected loss at each end (None for a branch whose step
    size is unstable). Momentum is carried over as PyTorch's buffer is (lr-free), so the
    displacement u = x_t - x_(t-1) scales with the learning rate: E u^2 by r^2, E xu by r."""
    m = 0.0 if one_minus_momentum is None else 1.0 - one_minus_momentum
    ref = moment_matrix(h, lr, one_minus_momentum, b0, p)
    v, t = initial_moments(len(h)), 0
    out = []
    for s in sorted(at):
        v = np.linalg.matrix_power(ref, s - t) @ v
        t = s
        c = Checkpoint(s, s * b0, float(0.5 * h @ v[:, 0, 0]),
                       float(0.5 * h @ (np.linalg.matrix_power(ref, horizon) @ v)[:, 0, 0]))
        for k in factors:
            r = LR_RULES[lr_rule](k)
            lr_k, steps = lr * r, horizon // k
            unstable = bool(np.any(lr_k * h ** (1.0 - p) >= 2.0 * (1.0 + m)))
            loss = None
            if not unstable:
                w = v.copy()
                w[:, 1, 0] *= r * r
                w[:, 2, 0] *= r
                mat = moment_matrix(h, lr_k, one_minus_momentum, k * b0, p)
                value = float(0.5 * h @ (np.linalg.matrix_power(mat, steps) @ w)[:, 0, 0])
                loss = value if math.isfinite(value) else None
            c.branches.append(Branch(k, k * b0, lr_k, steps, loss))
        out.append(c)
    return out


def _omm(req: TrialRequest) -> float | None:
    """The request's 1 - momentum (None: plain SGD)."""
    return req.params.get("one_minus_momentum") if req.optimizer == "momentum" else None


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
        if not 0.0 <= o.ema < 1.0:
            return [("ema", f"{o.ema}; allowed: [0, 1) (0: no averaging)")]
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

    metric_ranges: ClassVar[dict[str, tuple[float, float]]] = {"loss": (0.0, float("inf"))}

    def initial_metric(self, metric: str) -> float | None:
        """L(0) = sum(h_i) / 2 (E x0^2 = 1), without building the spectrum for a huge K."""
        k = self.options.dimensions
        if metric != "loss" or k < 1:
            return None
        if k <= 10**6:
            return 0.5 * float(spectrum(k).sum())
        return 0.5 * (math.log(k) + 0.5772156649015329 + 1 / (2 * k))  # H_k, error < 1/k^2

    def memory_bytes(self, batch_size: int, optimizer: str, precision: str) -> int | None:
        """A trial keeps a few dozen float64 arrays of K entries (64 counted)."""
        return 64 * 8 * self.options.dimensions

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
        return Dynamics(self.curvatures(), float(req.params["learning_rate"]), _omm(req),
                        req.batch_size, self.options.precondition_power, self.options.ema)

    def noise_scale(self, request: TrialRequest, at: Sequence[int], micro_batches: int,
                    ema: float) -> NoiseScale:
        """B_simple(t) exactly: the true gradient is H x, so E|G|^2 = sum_i h_i^2 E x_i^2(t)
        (:func:`second_moments`), and the per-example noise covariance is H, so tr(Sigma) =
        sum_i h_i; B_simple(t) is their ratio (no estimator, no moving average:
        ``micro_batches`` and ``ema`` are not used)."""
        dyn = self.dynamics(request)
        if dyn.diverged:  # an unstable step size: E x^2 grows without bound
            return finish(request.batch_size, [], 0.0, method=EXACT, steps=0, diverged_at=0)
        h = self.curvatures()
        s = second_moments(h, float(request.params["learning_rate"]), _omm(request),
                           request.batch_size, self.options.precondition_power, sorted(at))
        trace = float(h.sum())
        raw = [(t, float((h * h) @ row), trace) for t, row in zip(sorted(at), s)]
        return finish(request.batch_size, raw, 0.0, method=EXACT, steps=request.max_steps)

    def branch(self, request: TrialRequest, at: Sequence[int], factors: Sequence[int],
               lr_rule: str, horizon: int) -> LocalCBS:
        """Merrill et al.'s branches computed exactly from the closed-form second moments
        (:func:`branch_losses`): expected losses, no sampling noise. Not with ``ema`` (the
        loss is then measured at the average, whose state a branch would have to carry)."""
        if self.options.ema > 0.0:
            raise UsageError("workload.ema: the local critical batch size is computed without "
                             "an average of the iterates; allowed: ema = 0")
        if self.dynamics(request).diverged:
            raise UsageError(f"learning_rate {request.params['learning_rate']}: the reference "
                             f"run is unstable at B = {request.batch_size}")
        checkpoints = branch_losses(self.curvatures(), float(request.params["learning_rate"]),
                                    _omm(request), request.batch_size,
                                    self.options.precondition_power, at, factors, lr_rule,
                                    horizon)
        return LocalCBS(request.batch_size, lr_rule, 0.0, horizon, BRANCHED, checkpoints)

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
            # [target] also: on to the last goal's exact step (each goal's step is evaluated)
            ends = [hit] + [dyn.first_hit(g.value, req.max_steps) if g.direction == "minimize"
                            else None for g in req.also]
            end = req.max_steps if None in ends else max(ends)
            steps = sorted({s for s in req.eval_steps if s < end} | {end}
                           | {e for e in ends[1:] if e is not None})
            result.stopped_at_step = end
            for s, value in zip(steps, dyn.loss(np.array(steps))):
                metrics = {"loss": float(value)}
                if not value <= req.divergence_factor * dyn.loss0:
                    result.diverged, result.stopped_at_step = True, s
                    break
                result.curve.append((s, metrics))
                if report(s, metrics) and s != hit:
                    result.pruned = hit is None or s < hit
                    result.stopped_at_step = s
                    break
            # (a trial that diverged after the target while training on to an extra goal
            # reached the target)
            if hit is not None and not result.pruned and (
                    not result.diverged or result.stopped_at_step > hit):
                result.reached, result.steps_to_target, result.steps_after = True, hit, hit - 1
            result.best_metric = min((m["loss"] for _, m in result.curve), default=None)
        result.examples_seen = result.stopped_at_step * req.batch_size
        result.wall_seconds = time.perf_counter() - started
        return result
