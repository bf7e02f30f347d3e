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

#: Bound evaluations before the search stops bisecting and evaluates the remaining candidate
#: intervals exactly, left to right, in blocks (slower, equally exact). Needed only where many
#: slowly decaying oscillations keep the bounds below the target for a long stretch.
MAX_BOUND_EVALS = 2_000
EXACT_BLOCK = 256
#: Oscillating terms whose combined amplitude bound is below this (in loss units, targets are
#: ~1e-2) are bounded together rather than one by one: the bound stays valid, a hair looser.
AGGREGATE = 1e-9


@dataclass
class NQMOptions:
    """Options of the ``nqm`` workload."""

    dimensions: int = 10_000  # K: h_i = 1/i, i = 1..K
    precondition_power: float = 0.0  # p: preconditioner H^-p, 0 <= p < 1


def spectrum(k: int) -> np.ndarray:
    """Curvatures h_i = 1/i, i = 1..k."""
    return 1.0 / np.arange(1, k + 1, dtype=np.float64)


def _sinhc(x: np.ndarray) -> np.ndarray:
    """sinh(x)/x, 1 at 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.abs(x) < 1e-6, 1.0 + x * x / 6.0, np.sinh(x) / np.where(x == 0, 1, x))


def _sinc(x: np.ndarray) -> np.ndarray:
    """sin(x)/x, 1 at 0."""
    return np.where(np.abs(x) < 1e-6, 1.0 - x * x / 6.0, np.sin(x) / np.where(x == 0, 1, x))


class Dynamics:
    """Closed-form expected loss of SGD / heavy-ball momentum on the NQM, with certified bounds.

    Every direction's transient q_i(t) = E x_i^2(t) - S_xx,i falls in one of these forms:

    * plain SGD: c (1 - a)^(2t), one monotone term;
    * momentum, eigenvalues apart: c1 l1^(2t) + c2 l2^(2t) + c3 m^t, three monotone terms if real,
      or c3 m^t + A m^t cos(t phi + psi) if complex (bounded by -A m^t0 when a trough of the
      cosine falls in the interval, else by the cosine at the ends);
    * momentum, eigenvalues close (|ell| = |log(l1/l2)| < 0.05 if real, < 1e-3 if complex;
      critical damping included), where the
      form above cancels catastrophically: m^t (P + b1 S(t) + b2 C(t)) with S = sinh(t ell)/ell,
      C = 2 (cosh(t ell) - 1)/ell^2 (-> t and t^2 as ell -> 0; sin/cos for complex ell). P, b1, b2
      are solved from the exact q(0), q(1), q(2). For real ell, m^t S and m^t C are unimodal with
      closed-form peaks, so each term's extremes on an interval are exact; for complex ell,
      |S| <= min(t, 1/theta) and 0 <= C <= min(t^2, 4/theta^2).
    """

    def __init__(self, h: np.ndarray, lr: float, one_minus_momentum: float | None,
                 batch_size: int, p: float = 0.0) -> None:
        omm = 1.0 if one_minus_momentum is None else float(one_minus_momentum)
        m = 1.0 - omm
        self.m = m
        a = lr * h ** (1.0 - p)
        n = lr * lr * h ** (-2.0 * p) * h / batch_size
        self.loss0 = 0.5 * float(h.sum())  # E x0^2 = 1
        # Stable iff both eigenvalues of A lie inside the unit circle: 0 < a < 2 (1 + m).
        self.diverged = bool(np.any(a >= 2.0 * (1.0 + m)))
        self.bound_evals = 0
        empty = np.empty(0)
        self._cplx = (empty,) * 4
        self._amp_tail = np.zeros(1)
        self._close_real = self._close_cplx = None
        if self.diverged:
            return
        hh = 0.5 * h
        if m == 0.0:
            sxx = n / (a * (2.0 - a))
            self.loss_star = float(hh @ sxx)
            with np.errstate(divide="ignore"):  # a == 1: the term is 0 for t >= 1
                self._mono = (hh * (1.0 - sxx), 2.0 * np.log(np.abs(1.0 - a)))
            self._finish_bounds([])
            return
        self.log_m = lm = math.log(m)
        k = 2.0 * (1.0 + m) - a
        sxx = n * (1.0 + m) / (a * omm * k)
        suu = 2.0 * n / (omm * k)
        sxu = n / (omm * k)
        self.loss_star = float(hh @ sxx)
        dxx, duu, dxu = 1.0 - sxx, -suu, -sxu
        g11 = (1 - a) ** 2 * dxx + 2 * (1 - a) * m * dxu + m * m * duu
        g12 = -m * ((1 - a) * dxx + m * dxu)
        g22 = m * m * dxx
        tr = 1.0 - a + m
        # tr^2 - 4m, written to avoid cancelling O(1) terms when a and 1 - m are small
        disc = omm * omm - 2.0 * a * (1.0 + m) + a * a
        ratio = np.sqrt(np.abs(disc)) / np.maximum(np.abs(tr), 1e-300)
        ell = np.where(disc > 0, 2.0 * np.arctanh(np.minimum(ratio, 1 - 1e-16)),
                       2.0 * np.arctan(ratio))  # |log(l1/l2)|; theta = arg(l1/l2) if complex
        # Real pairs with |ell| < 0.05 use the (P, S, C) form, whose unimodal terms bound tightly
        # where the three exponentials would nearly cancel.
        # Complex pairs use it only when the rotation theta is tiny (cancellation in c1, c3);
        # otherwise the exact sinusoid's trough-aware bound is the tighter one.
        close = np.where(disc > 0, ell < 0.05, ell < 1e-3)
        real, cplx = (disc > 0) & ~close, (disc <= 0) & ~close

        # Far apart, real: l1 (larger magnitude, no cancellation) and l2 = m / l1.
        sq = np.sqrt(np.where(real, disc, 1.0))
        l1 = np.where(real, 0.5 * (tr + np.copysign(sq, tr)), 1.0)
        l2 = m / l1
        d2 = np.where(real, disc, 1.0)  # (l1 - l2)^2
        c1 = (g11 + 2 * g12 / l1 + g22 / l1 ** 2) / d2
        c2 = (g11 + 2 * g12 / l2 + g22 / l2 ** 2) / d2
        c3 = (-2 * g11 - 2 * g12 * tr / m - 2 * g22 / m) / d2
        one_minus_l1 = 2.0 * a / (a + omm + sq)  # 1 - l1 without cancellation (tr > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_l1 = np.where(tr > 0, np.log1p(-np.minimum(one_minus_l1, 1.0)),
                              np.log(np.abs(l1)))
            log_l2 = np.log(np.abs(l2))
        r = real
        mono_c = [hh[r] * c1[r], hh[r] * c2[r], hh[r] * c3[r]]
        mono_l = [2 * log_l1[r], 2 * log_l2[r], np.full(int(r.sum()), lm)]

        # Far apart, complex pair l, conj(l), |l|^2 = m: q = c3 m^t + 2 Re(c1 l^(2t)).
        x = cplx
        s_im = np.sqrt(np.where(x, -disc, 1.0))
        lc = 0.5 * (tr[x] + 1j * s_im[x])
        dc2 = -(s_im[x] ** 2)
        cc1 = (g11[x] + 2 * g12[x] / lc + g22[x] / lc ** 2) / dc2
        cc3 = ((-2 * g11[x] - 2 * g12[x] * tr[x] / m - 2 * g22[x] / m) / dc2).real
        amp = hh[x] * 2 * np.abs(cc1)
        order = np.argsort(-amp)  # largest oscillations first; see _close_bound
        self._cplx = ((hh[x] * cc3)[order], amp[order], (2 * np.angle(lc))[order],
                      np.angle(cc1)[order])
        self._amp_tail = np.concatenate([np.cumsum(amp[order][::-1])[::-1], [0.0]])
        extra = [(hh[x] * cc3, np.full(int(x.sum()), lm))]

        # Close: m^t (P + b1 S + b2 C), from q(0) = Dxx, q(1) = g11, q(2) = g11 tr^2 + 2 g12 tr + g22.
        for is_real in (True, False):
            sel = close & ((disc > 0) if is_real else (disc <= 0))
            if not sel.any():
                continue
            e = ell[sel]
            (s_1, s_2), (c_1, c_2) = self._sc(np.array([[1.0], [2.0]]), e, is_real)
            q0 = dxx[sel]
            q1 = g11[sel]
            q2 = g11[sel] * tr[sel] ** 2 + 2 * g12[sel] * tr[sel] + g22[sel]
            r1, r2 = q1 / m - q0, q2 / (m * m) - q0
            det = s_1 * c_2 - s_2 * c_1
            b1 = (r1 * c_2 - r2 * c_1) / det
            b2 = (s_1 * r2 - s_2 * r1) / det
            part = (hh[sel] * q0, hh[sel] * b1, hh[sel] * b2, e)
            if is_real:
                self._close_real = part
                # peak of m^t S(t) = (E1 - E2)/(2 ell): atanh(ell/|log m|)/ell (1/|log m| at 0);
                # m^t C(t) = (sqrt E1 - sqrt E2)^2/ell^2 peaks at twice that
                self._peak_s = np.where(e > 1e-12, np.arctanh(np.minimum(e / -lm, 1 - 1e-16))
                                        / np.maximum(e, 1e-300), 1.0 / -lm)
            else:
                self._close_cplx = part
                self._cc_abs = (float(np.abs(part[1]).sum()), float(np.abs(part[2]).sum()))
            extra.append((hh[sel] * q0, np.full(int(sel.sum()), lm)))
        self._mono = (np.concatenate(mono_c), np.concatenate(mono_l))
        self._finish_bounds(extra)

    @staticmethod
    def _sc(t: np.ndarray, ell: np.ndarray, is_real: bool) -> tuple[np.ndarray, np.ndarray]:
        """S(t) and C(t) (without the m^t factor) at t (a column vector)."""
        x = t * ell
        if is_real:
            return t * _sinhc(x), t * t * _sinhc(x / 2) ** 2
        return t * _sinc(x), t * t * _sinc(x / 2) ** 2

    def _finish_bounds(self, extra: list[tuple[np.ndarray, np.ndarray]]) -> None:
        bc = np.concatenate([self._mono[0], *(c for c, _ in extra)])
        bl = np.concatenate([self._mono[1], *(l for _, l in extra)])
        self._pos = (bc[bc >= 0], bl[bc >= 0])
        self._neg = (bc[bc < 0], bl[bc < 0])

    # -- close eigenvalues: m^t S(t), m^t C(t) -------------------------------------------------

    def _ms_mc_real(self, t: np.ndarray, ell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """m^t sinh(t ell)/ell and m^t 2 (cosh(t ell) - 1)/ell^2 for real ell.

        As (E1 - E2)/(2 ell) and (sqrt E1 - sqrt E2)^2/ell^2 with E1,2 = exp(t (log m +- ell))
        (both <= 1 for a stable direction); where t ell < 1e-3 that difference would lose
        digits, so there the series m^t t (1 + x^2/6) and m^t t^2 (1 + x^2/12) are used.
        """
        x = t * ell
        lm = self.log_m
        with np.errstate(under="ignore", invalid="ignore", divide="ignore"):
            e1, e2 = np.exp(t * (lm + ell)), np.exp(t * (lm - ell))
            small = x < 1e-3
            if small.any():
                mt = np.exp(t * lm)
                ms = np.where(small, mt * t * (1 + x * x / 6), (e1 - e2) / (2 * ell))
                mc = np.where(small, mt * t * t * (1 + x * x / 12),
                              (np.sqrt(e1) - np.sqrt(e2)) ** 2 / (ell * ell))
            else:
                ms = (e1 - e2) / (2 * ell)
                mc = (np.sqrt(e1) - np.sqrt(e2)) ** 2 / (ell * ell)
        return ms, mc

    def _close_eval(self, t: np.ndarray) -> np.ndarray:
        """Sum of 1/2 h q over close-eigenvalue directions at each t (column vector)."""
        total = np.zeros(len(t))
        if self._close_real is not None:
            p, b1, b2, ell = self._close_real
            ms, mc = self._ms_mc_real(t, ell)
            total += (np.exp(t * self.log_m) * p + ms * b1 + mc * b2).sum(axis=1)
        if self._close_cplx is not None:
            p, b1, b2, th = self._close_cplx
            with np.errstate(under="ignore"):
                mt = np.exp(t * self.log_m)
            s, c = self._sc(t, th, False)
            total += (mt * (p + b1 * s + b2 * c)).sum(axis=1)
        return total

    def _close_bound(self, t0: int, t1: int) -> float:
        """Lower bound on [t0, t1] of the oscillating and close-eigenvalue terms (the monotone
        ones are in the pool)."""
        lb = 0.0
        lm = self.log_m
        if self._close_real is not None:
            _, b1, b2, ell = self._close_real
            # m^t S and m^t C are unimodal: their extremes on [t0, t1] are at the ends or at
            # the peaks (precomputed), so one evaluation at 4 time rows gives them exactly.
            rows = np.vstack([np.full(len(ell), float(t0)), np.full(len(ell), float(t1)),
                              np.clip(self._peak_s, t0, t1), np.clip(2 * self._peak_s, t0, t1)])
            ms, mc = self._ms_mc_real(rows, ell)
            lb += float(np.where(b1 >= 0, b1 * np.minimum(ms[0], ms[1]),
                                 b1 * np.maximum(ms[2], np.maximum(ms[0], ms[1]))).sum())
            lb += float(np.where(b2 >= 0, b2 * np.minimum(mc[0], mc[1]),
                                 b2 * np.maximum(mc[3], np.maximum(mc[0], mc[1]))).sum())
        cc = self._close_cplx
        if cc is not None and t0 >= 2 / -lm:
            # past the peaks of m^t t and m^t t^2, |b1 S| + |b2 C| <= m^t0 (t0 |b1| + t0^2 |b2|)
            total = math.exp(t0 * lm) * (t0 * self._cc_abs[0] + t0 * t0 * self._cc_abs[1])
            if total <= AGGREGATE:
                lb -= total
                cc = None
        if cc is not None:
            _, b1, b2, th = cc
            mt0, mt1 = math.exp(t0 * lm), math.exp(t1 * lm)
            # While t theta <= pi, S = sin(t theta)/theta >= 0 is concave (min at an end, max at
            # pi/(2 theta)) and C = 2 (1 - cos t theta)/theta^2 increases; past that, envelopes
            # |S| <= min(t, 1/theta), 0 <= C <= min(t^2, 4/theta^2) times max m^t t^k.
            inside = t1 * th <= math.pi
            (s0, s1), (c0, c1) = self._sc(np.array([[float(t0)], [float(t1)]]), th, False)
            s_top = self._sc(np.clip(math.pi / 2 / th, t0, t1)[None, :], th, False)[0][0]

            def env(power: int, cap: np.ndarray) -> np.ndarray:
                tp = min(max(power / -lm, t0), t1)
                with np.errstate(under="ignore"):
                    return np.minimum(math.exp(tp * lm) * tp ** power, mt0 * cap)

            s_lo = np.where(inside, np.minimum(s0, s1), -np.minimum(t1, 1 / th))
            s_hi = np.where(inside, s_top, np.minimum(t1, 1 / th))
            c_lo = np.where(inside, c0, 0.0)
            c_hi = np.where(inside, c1, np.minimum(t1 * t1, 4 / th ** 2))
            with np.errstate(under="ignore"):
                lb += float(np.where(b1 >= 0, b1 * np.where(s_lo >= 0, mt1, mt0) * s_lo,
                                     b1 * np.where(inside, mt0 * s_hi, env(1, 1 / th))).sum())
                lb += float(np.where(b2 >= 0, b2 * mt1 * c_lo,
                                     b2 * np.where(inside, mt0 * c_hi,
                                                   env(2, 4 / th ** 2))).sum())
        ccoef, camp, cphase, cshift = self._cplx
        if len(camp):
            # far-apart complex pairs: A m^t cos(t phi + psi) >= -A m^t0 if a trough of the
            # cosine lies in the interval, else A min(cos at the ends) m^(t1 or t0). Pairs are
            # sorted by A: the smallest ones, whose A m^t0 add up to <= AGGREGATE, are bounded
            # together by -sum(A) m^t0 (cheap late in the search, when m^t0 is tiny).
            mt0 = math.exp(t0 * self.log_m)
            k = int(np.searchsorted(-self._amp_tail, -AGGREGATE / mt0)) if mt0 > 0 else 0
            lb -= float(self._amp_tail[k]) * mt0
            camp, cphase, cshift = camp[:k], cphase[:k], cshift[:k]
            x0, x1 = t0 * cphase + cshift, t1 * cphase + cshift
            two_pi = 2 * math.pi
            trough = (np.floor((x1 - math.pi) / two_pi + 1e-9)
                      >= np.ceil((x0 - math.pi) / two_pi - 1e-9))
            cmin = np.minimum(np.cos(x0), np.cos(x1))
            with np.errstate(under="ignore"):
                mt0, mt1 = math.exp(t0 * self.log_m), math.exp(t1 * self.log_m)
            lb += float(camp @ np.where(trough, -mt0, cmin * np.where(cmin >= 0, mt1, mt0)))
        return lb

    # -- the loss and its bounds -----------------------------------------------------------

    def loss(self, t: np.ndarray | int) -> np.ndarray:
        """Expected loss at step(s) ``t`` (exact up to floating point)."""
        ts = np.atleast_1d(np.asarray(t, dtype=np.int64))
        out = np.full(len(ts), np.inf if self.diverged else self.loss_star)
        if self.diverged:
            return out
        ccoef, camp, cphase, cshift = self._cplx
        for j in range(0, len(ts), 64):  # chunks keep the temporaries small
            chunk = ts[j:j + 64]
            tt = chunk.astype(np.float64)[:, None]
            with np.errstate(under="ignore", invalid="ignore"):
                v = np.exp(tt * self._mono[1]) @ self._mono[0]
                if len(ccoef):
                    mt = np.exp(tt * self.log_m)
                    v = v + (mt * (ccoef + camp * np.cos(tt * cphase + cshift))).sum(axis=1)
                v = v + self._close_eval(tt)
            out[j:j + 64] += np.where(chunk == 0, self.loss0 - self.loss_star, v)
        return out

    def lower_bound(self, t0: int, t1: int) -> float:
        """A certified lower bound of L(t) for all integers t in [t0, t1], t0 >= 1."""
        self.bound_evals += 1
        with np.errstate(under="ignore", invalid="ignore"):
            lb = self.loss_star + float(self._pos[0] @ np.exp(t1 * self._pos[1])) + float(
                self._neg[0] @ np.exp(t0 * self._neg[1]))
        if self.m > 0:
            with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
                lb += self._close_bound(t0, t1)
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
                # the stack holds the unresolved intervals, leftmost on top: scan them exactly
                while stack:
                    a, b = stack.pop()
                    for c in range(a, b + 1, EXACT_BLOCK):
                        ts = np.arange(c, min(c + EXACT_BLOCK, b + 1))
                        below = np.nonzero(self.loss(ts) <= target)[0]
                        if len(below):
                            return int(ts[below[0]])
                return None
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
