"""Families of terms whose sum is the NQM's expected loss: exact values, certified lower bounds on
intervals of steps, and certified enclosures over windows of consecutive steps.

The transient L(t) - L* of workloads/nqm.py is a sum over directions of a few kinds of terms:

* :class:`Exponentials`: c exp(t l), real l < 0, each monotone in t;
* :class:`Oscillations`: A cos(t phi + psi) times a modulus rho^t shared by the whole family;
* :class:`Close`: rho^t (b1 S(t) + b2 C(t)) for a pair of close eigenvalues (ell = log(l1/l2)
  real, or i theta), with S = sinh(t ell)/ell and C = 2 (cosh(t ell) - 1)/ell^2 in stable forms.

Each family gives ``lower(t0, t1)`` (fine: a certified lower bound on the family's minimum over
[t0, t1], term by term), ``coarse(t0, t1)`` (certified too, from a few aggregates: cheap, looser)
and ``window(T, W)``: over the steps T .. T + W - 1 the family is written as
sum_g Re(exp(s mu_g) P_g(s / W)) with a few groups g and polynomials P_g of low degree, plus a
certified bound on the error. Terms whose rates lie within kappa / W of a group's centre mu_g
share it: exp(s lambda) = exp(s mu_g) exp(s delta), |s delta| <= kappa, and exp(s delta) is its
Taylor polynomial of degree ``TAYLOR_DEGREE`` to within kappa^(p+1) / (p+1)! (times |z|, the term's
size at T). Close pairs are expanded through the addition theorems of S and C (stable: no
cancelling exponentials), or, once W ell > ``CLOSE_KAPPA`` (so T ell >= 1 for windows with
W <= 4 T), as their three exponentials, which no longer cancel. A window thus evaluates all W
steps in O(W x groups x degree) instead of O(W x K) (K ~ 10^4 directions).
"""

from __future__ import annotations

import math

import numpy as np

#: exp(-UNDERFLOW) ~ 1e-304: a term that small is below the resolution of any loss (dropping
#: the positive ones keeps a lower bound valid; the negative ones are < 1e-300 in all).
UNDERFLOW = 700.0
#: Taylor groups: rates within TAYLOR_KAPPA / W of their group's centre, polynomials of this
#: degree: relative error <= 1 / 13! ~ 1.6e-10 per term.
TAYLOR_KAPPA = 1.0
TAYLOR_DEGREE = 12
#: Close pairs: one polynomial in s while W |ell| <= CLOSE_KAPPA, with CLOSE_TERMS terms of the
#: series of S and of C (relative error < 1e-14 at the limit).
CLOSE_KAPPA = 4.0
CLOSE_TERMS = 16
#: Close real pairs with t0 ell >= EXP_FORM are bounded as three exponentials (which then no
#: longer cancel: the two slower ones are below e^-EXP_FORM of the fastest-growing one).
EXP_FORM = 10.0
#: Equal-count buckets for the coarse bounds of close pairs.
BUCKETS = 32
#: In a window, terms already below exp(-DROP) x |coefficient| at its start are not grouped: their
#: sizes go into the error bound instead.
DROP = 45.0


def _sinhc(x: np.ndarray) -> np.ndarray:
    """sinh(x)/x, 1 at 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.abs(x) < 1e-6, 1.0 + x * x / 6.0, np.sinh(x) / np.where(x == 0, 1, x))


def _sinc(x: np.ndarray) -> np.ndarray:
    """sin(x)/x, 1 at 0."""
    return np.where(np.abs(x) < 1e-6, 1.0 - x * x / 6.0, np.sin(x) / np.where(x == 0, 1, x))


def taylor_groups(z: np.ndarray, x: np.ndarray, w: int, imaginary: bool,
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Group terms z_j exp(s lambda_j), s in [0, w), whose rates x_j (real, monotone in j) are
    the real parts of lambda_j, or, if ``imaginary``, their imaginary parts (common real part).

    Returns the centres x_g (one per group), the coefficients M (groups x (degree + 1)) with
    sum_{j in g} z_j exp(s i^? x_j) = exp(s i^? x_g) sum_k M_gk (s / w)^k + error, and the bound
    sum_j |z_j| kappa^(p+1) / (p+1)! on the error's absolute value (valid while every rate and
    centre has a non-positive real part, as all of ours do).
    """
    width = 2.0 * TAYLOR_KAPPA / w
    key = np.floor(x / width)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    centres = (key[starts] + 0.5) * width
    sizes = np.diff(np.r_[starts, len(x)])
    d = (x - np.repeat(centres, sizes)) * w  # |d| <= kappa
    p = TAYLOR_DEGREE
    powers = np.empty((len(d), p + 1))
    powers[:, 0] = 1.0
    powers[:, 1:] = d[:, None] / np.arange(1, p + 1)
    np.cumprod(powers, axis=1, out=powers)
    m = np.add.reduceat(z[:, None] * powers, starts, axis=0)
    if imaginary:
        m = m * (1j ** np.arange(p + 1))
    err = float(np.abs(z).sum()) * TAYLOR_KAPPA ** (p + 1) / math.factorial(p + 1)
    return centres, m, err


def real_window(z: np.ndarray, rates: np.ndarray, w: int,
                ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Taylor groups of sum_j z_j exp(s rates_j) (rates real, monotone, <= 0) over s in [0, w),
    the terms smaller than exp(-DROP) x max |z| left out and added to the error bound.
    Returns centres, coefficients, error bound, sum |z|."""
    size = np.abs(z)
    scale = float(size.sum())
    keep = size > math.exp(-DROP) * (size.max() if len(z) else 0.0)
    dropped = scale - float(size[keep].sum())
    if not keep.any():
        return np.empty(0), np.empty((0, TAYLOR_DEGREE + 1)), dropped, scale
    centres, m, err = taylor_groups(z[keep], rates[keep], w, imaginary=False)
    return centres, m, err + dropped + 1e-15 * scale, scale


def unit_rotations(w: int, phi: np.ndarray) -> np.ndarray:
    """exp(i s phi_g) for s = 0 .. w-1 (rows), as products of two tables of ~sqrt(w) rows."""
    b = max(1, math.isqrt(w))
    hi = np.exp(1j * np.outer(np.arange(0, w, b), phi))
    lo = np.exp(1j * np.outer(np.arange(b), phi))
    return (hi[:, None, :] * lo[None, :, :]).reshape(-1, len(phi))[:w]


class Exponentials:
    """sum_j c_j exp(t l_j) with real l_j < 0 (or -inf): every term is monotone in t."""

    def __init__(self, c: np.ndarray, l: np.ndarray) -> None:
        order = np.argsort(-l, kind="stable")  # slowest decay first
        self.c, self.l = c[order], l[order]
        self._key = -self.l  # ascending: the terms not yet underflowed at t are a prefix
        pos = self.c >= 0
        self._pos = (self.c[pos], self.l[pos], self._key[pos])
        self._neg = (self.c[~pos], self.l[~pos], self._key[~pos])
        self._abs_tail = np.r_[np.cumsum(np.abs(self.c)[::-1])[::-1], 0.0]
        self._neg_tail = np.r_[np.cumsum(self._neg[0][::-1])[::-1], 0.0]

    def __len__(self) -> int:
        return len(self.c)

    @staticmethod
    def _sum_at(part: tuple[np.ndarray, ...], t: float) -> tuple[float, int]:
        """The sum at t of the terms with t l > -DROP (a prefix), and the prefix's length."""
        c, l, key = part
        k = int(np.searchsorted(key, DROP / t))
        return float(c[:k] @ np.exp(t * l[:k])), k

    def values(self, t: np.ndarray) -> np.ndarray:
        """The sum at each t (1-D array of steps >= 1)."""
        k = int(np.searchsorted(self._key, UNDERFLOW / t.min()))
        return np.exp(np.maximum(np.outer(t, self.l[:k]), -UNDERFLOW)) @ self.c[:k]

    def lower(self, t0: float, t1: float) -> float:
        """Each term's minimum over [t0, t1], summed: positive terms at t1, negative at t0.
        Positive terms below exp(-DROP) c count as 0, negative ones as exp(-DROP) c."""
        pos, _ = self._sum_at(self._pos, t1)
        neg, k = self._sum_at(self._neg, t0)
        return pos + neg + math.exp(-DROP) * float(self._neg_tail[k])

    def window(self, t: int, w: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Taylor groups over steps t .. t + w - 1 (see :func:`real_window`); the terms already
        below exp(-DROP) |c| at t are left out, their sizes added to the error bound."""
        k = int(np.searchsorted(self._key, DROP / t))
        z = self.c[:k] * np.exp(t * self.l[:k])
        centres, m, err, scale = real_window(z, self.l[:k], w)
        rest = float(self._abs_tail[k]) * math.exp(-DROP)
        return centres, m, err + rest, scale + rest


class Oscillations:
    """sum_j A_j cos(t phi_j + psi_j), A_j >= 0, phi_j in (0, pi]: the oscillating part of
    complex-conjugate pairs sharing one modulus (the caller multiplies by rho^t)."""

    def __init__(self, amp: np.ndarray, phi: np.ndarray, psi: np.ndarray) -> None:
        order = np.argsort(-phi, kind="stable")  # fastest first
        self.amp, self.phi, self.psi = amp[order], phi[order], psi[order]
        self._key = -self.phi  # ascending
        self._amp_sum = np.r_[0.0, np.cumsum(self.amp)]
        self.total = float(self._amp_sum[-1])

    def __len__(self) -> int:
        return len(self.amp)

    def values(self, t: np.ndarray) -> np.ndarray:
        """The sum at each t (1-D), without the modulus."""
        return np.cos(np.outer(t, self.phi) + self.psi) @ self.amp

    def lower(self, t0: float, t1: float) -> float:
        """sum_j min over integers t in [t0, t1] of A_j cos(t phi_j + psi_j): -A_j where a
        trough (an odd multiple of pi) lies in the phase interval, else the smaller end."""
        # phases advancing by >= 2 pi over the interval surely pass a trough: a prefix
        k = int(np.searchsorted(self._key, -2 * math.pi / max(t1 - t0, 1e-300)))
        lb = -float(self._amp_sum[k])
        phi, psi, amp = self.phi[k:], self.psi[k:], self.amp[k:]
        x0, x1 = t0 * phi + psi, t1 * phi + psi
        two_pi = 2 * math.pi
        trough = (np.floor((x1 - math.pi) / two_pi + 1e-9)
                  >= np.ceil((x0 - math.pi) / two_pi - 1e-9))
        return lb + float(amp @ np.where(trough, -1.0, np.minimum(np.cos(x0), np.cos(x1))))

    def coarse(self) -> float:
        """-sum A_j: a lower bound at every t."""
        return -self.total

    def window(self, t: int, w: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Taylor groups of the sum (without the modulus) over steps t .. t + w - 1."""
        z = self.amp * np.exp(1j * (t * self.phi + self.psi))
        centres, m, err = taylor_groups(z, self.phi, w, imaginary=True)
        return centres, m, err, self.total


class Close:
    """rho^t sum_j (b1_j S_j(t) + b2_j C_j(t)): pairs of close eigenvalues, with
    S = sinh(t ell)/ell, C = 2 (cosh(t ell) - 1)/ell^2 for real ell >= 0 (l1 / l2 = e^ell) or
    S = sin(t theta)/theta, C = 2 (1 - cos(t theta))/theta^2 for a complex pair (ell = i theta).

    rho^t S and rho^t C are evaluated without cancelling exponentials; for real ell both are
    unimodal in t (closed-form peaks) and increasing in ell, which the bounds use.
    """

    def __init__(self, b1: np.ndarray, b2: np.ndarray, ell: np.ndarray, is_real: bool,
                 log_rho: float) -> None:
        order = np.argsort(-ell, kind="stable")
        self.b1, self.b2, self.ell = b1[order], b2[order], ell[order]
        self.is_real, self.lr = is_real, log_rho
        self.e = self.ell ** 2 if is_real else -self.ell ** 2  # ell^2, real or complex
        self._key = -self.ell  # ascending
        self._abs = (float(np.abs(self.b1).sum()), float(np.abs(self.b2).sum()))
        if is_real:
            # peak of rho^t S: atanh(ell/|log rho|)/ell (-> 1/|log rho|); of rho^t C: twice that
            e = self.ell
            self._peak = np.where(e > 1e-12, np.arctanh(np.minimum(e / -log_rho, 1 - 1e-16))
                                  / np.maximum(e, 1e-300), 1.0 / -log_rho)
            with np.errstate(divide="ignore", invalid="ignore"):
                # the three exponentials rho^t e^(+-t ell), rho^t (used where t ell is large)
                self._e1 = self.b1 / (2 * e) + self.b2 / (e * e)
                self._e2 = -self.b1 / (2 * e) + self.b2 / (e * e)
                self._e3_sum = np.r_[0.0, np.cumsum(-2 * self.b2 / (e * e))]
        self._buckets()

    def __len__(self) -> int:
        return len(self.b1)

    def _buckets(self) -> None:
        """Equal-count buckets (by ell) of the coefficients' positive and negative parts."""
        n = len(self.b1)
        starts = np.unique(np.linspace(0, n, BUCKETS + 1).astype(int)[:-1])
        parts = [np.maximum(self.b1, 0), np.minimum(self.b1, 0),
                 np.maximum(self.b2, 0), np.minimum(self.b2, 0)]
        self._bsum = [np.add.reduceat(p, starts) for p in parts]
        self._bhi = self.ell[starts]  # sorted descending: the bucket's largest ell
        self._blo = self.ell[np.r_[starts[1:], n] - 1]

    # -- values ---------------------------------------------------------------------------

    def _sc(self, t: np.ndarray, ell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rho^t S and rho^t C at t (column) for parameters ell (row)."""
        lr = self.lr
        with np.errstate(under="ignore", over="ignore", invalid="ignore", divide="ignore"):
            if not self.is_real:
                x = t * ell
                mt = np.exp(t * lr)
                return mt * t * _sinc(x), mt * t * t * _sinc(x / 2) ** 2
            # (E1 - E2)/(2 ell) and (sqrt E1 - sqrt E2)^2/ell^2, E1,2 = exp(t (log rho +- ell));
            # where t ell < 1e-3 the difference would lose digits: series instead
            x = t * ell
            e1, e2 = np.exp(t * (lr + ell)), np.exp(t * (lr - ell))
            ms = (e1 - e2) / (2 * ell)
            mc = (np.sqrt(e1) - np.sqrt(e2)) ** 2 / (ell * ell)
            small = x < 1e-3
            if small.any():
                mt = np.exp(t * lr)
                ms = np.where(small, mt * t * (1 + x * x / 6), ms)
                mc = np.where(small, mt * t * t * (1 + x * x / 12), mc)
            return ms, mc

    def values(self, t: np.ndarray) -> np.ndarray:
        """The sum at each t (1-D)."""
        ms, mc = self._sc(t[:, None], self.ell)
        return ms @ self.b1 + mc @ self.b2

    # -- bounds -----------------------------------------------------------------------------

    def _max_rho_tk(self, t0: float, t1: float, k: int) -> float:
        """max over [t0, t1] of rho^t t^k (unimodal, peak at k / |log rho|)."""
        tp = min(max(k / -self.lr, t0), t1)
        return math.exp(tp * self.lr) * tp ** k

    def coarse(self, t0: float, t1: float) -> float:
        """A lower bound from the bucket sums (O(buckets))."""
        b1p, b1n, b2p, b2n = self._bsum
        if self.is_real:
            lo, hi = self._blo, self._bhi
            s_lo, c_lo = self._sc(np.array([[t0], [t1]]), lo)
            peaks = self._peak_of(hi)
            rows = np.vstack([np.full(len(hi), float(t0)), np.full(len(hi), float(t1)),
                              np.clip(peaks, t0, t1), np.clip(2 * peaks, t0, t1)])
            s_hi, c_hi = self._sc(rows, hi)
            return float(b1p @ s_lo.min(axis=0) + b1n @ s_hi[:3].max(axis=0)
                         + b2p @ c_lo.min(axis=0) + b2n @ c_hi[[0, 1, 3]].max(axis=0))
        # |S| <= min(t, 1/theta), 0 <= C <= min(t^2, 4/theta^2); b2 >= 0 terms are >= 0
        lo = self._blo
        with np.errstate(divide="ignore"):
            s_env = np.minimum(self._max_rho_tk(t0, t1, 1), math.exp(t0 * self.lr) / lo)
            c_env = np.minimum(self._max_rho_tk(t0, t1, 2), 4 * math.exp(t0 * self.lr) / lo ** 2)
        return float(-(b1p - b1n) @ s_env + b2n @ c_env)

    def _peak_of(self, ell: np.ndarray) -> np.ndarray:
        lr = self.lr
        return np.where(ell > 1e-12, np.arctanh(np.minimum(ell / -lr, 1 - 1e-16))
                        / np.maximum(ell, 1e-300), 1.0 / -lr)

    def lower(self, t0: float, t1: float) -> tuple[float, float]:
        """(a lower bound of the sum over [t0, t1] except a part c rho^t, c) term by term."""
        if self.is_real:
            return self._lower_real(t0, t1)
        return self._lower_cplx(t0, t1), 0.0

    def _lower_real(self, t0: float, t1: float) -> tuple[float, float]:
        # pairs with t0 ell >= EXP_FORM (a prefix): three monotone exponentials each
        k = int(np.searchsorted(self._key, -EXP_FORM / t0, side="right"))
        lb = 0.0
        if k:
            ell, lr = self.ell[:k], self.lr
            for coef, rate in ((self._e1[:k], lr + ell), (self._e2[:k], lr - ell)):
                tt = np.where(coef >= 0, t1, t0)
                lb += float(coef @ np.exp(np.maximum(tt * rate, -UNDERFLOW)))
        # the rest: rho^t S, rho^t C unimodal: extremes at the ends or the clipped peaks
        b1, b2, ell, peak = self.b1[k:], self.b2[k:], self.ell[k:], self._peak[k:]
        if len(ell):
            rows = np.vstack([np.full(len(ell), float(t0)), np.full(len(ell), float(t1)),
                              np.clip(peak, t0, t1), np.clip(2 * peak, t0, t1)])
            ms, mc = self._sc(rows, ell)
            lb += float(np.where(b1 >= 0, b1 * np.minimum(ms[0], ms[1]),
                                 b1 * np.maximum(ms[2], np.maximum(ms[0], ms[1]))).sum())
            lb += float(np.where(b2 >= 0, b2 * np.minimum(mc[0], mc[1]),
                                 b2 * np.maximum(mc[3], np.maximum(mc[0], mc[1]))).sum())
        return lb, float(self._e3_sum[k])

    def _lower_cplx(self, t0: float, t1: float) -> float:
        lr = self.lr
        b1, b2, th = self.b1, self.b2, self.ell
        if t0 >= 2 / -lr:
            # past the peaks of rho^t t and rho^t t^2: |b1 S| + |b2 C| <= rho^t0 (t0 |b1| + t0^2 |b2|)
            total = math.exp(t0 * lr) * (t0 * self._abs[0] + t0 * t0 * self._abs[1])
            if total <= 1e-9:
                return -total
        mt0, mt1 = math.exp(t0 * lr), math.exp(t1 * lr)
        # While t theta <= pi, S = sin(t theta)/theta >= 0 is concave (min at an end, max at
        # pi/(2 theta)) and C = 2 (1 - cos t theta)/theta^2 increases; past that, envelopes
        # |S| <= min(t, 1/theta), 0 <= C <= min(t^2, 4/theta^2) times max rho^t t^k.
        inside = t1 * th <= math.pi
        x = np.array([[float(t0)], [float(t1)]]) * th
        s0, s1 = t0 * _sinc(x[0]), t1 * _sinc(x[1])
        c0, c1 = t0 * t0 * _sinc(x[0] / 2) ** 2, t1 * t1 * _sinc(x[1] / 2) ** 2
        tm = np.clip(math.pi / 2 / th, t0, t1)
        s_top = tm * _sinc(tm * th)
        env1 = np.minimum(self._max_rho_tk(t0, t1, 1), mt0 / th)
        env2 = np.minimum(self._max_rho_tk(t0, t1, 2), mt0 * 4 / th ** 2)
        s_lo = np.where(inside, np.minimum(s0, s1), -np.minimum(t1, 1 / th))
        c_lo = np.where(inside, c0, 0.0)
        with np.errstate(under="ignore"):
            lb = float(np.where(b1 >= 0, b1 * np.where(s_lo >= 0, mt1, mt0) * s_lo,
                                b1 * np.where(inside, mt0 * s_top, env1)).sum())
            lb += float(np.where(b2 >= 0, b2 * mt1 * c_lo,
                                 b2 * np.where(inside, mt0 * c1, env2)).sum())
        return lb

    # -- windows ----------------------------------------------------------------------------

    def window(self, t: int, w: int) -> tuple[np.ndarray, float, float, float, list]:
        """Over steps t .. t + w - 1: (coefficients of a polynomial in u = s / w, to be
        multiplied by rho^s; its error bound; a size for rounding; an extra coefficient of
        rho^(t + s); the real pairs with w ell > CLOSE_KAPPA as exponentials, as a list of
        :func:`real_window` results).

        Pairs with w ell <= CLOSE_KAPPA: by the addition theorems, with c(x) = cosh(x ell)
        (cos for complex), rho^-(t+s) (b1 S(t+s) + b2 C(t+s)) = alpha + beta S(s) + gamma C(s),
        alpha = b1 S(t) + b2 C(t), beta = b1 c(t) + 2 b2 S(t), gamma = b2 + ell^2 alpha / 2, and
        S(s), C(s) are power series in s with coefficients ell^(2k).
        """
        k = int(np.searchsorted(self._key, -CLOSE_KAPPA / w, side="right")) if self.is_real else 0
        far = []
        extra = 0.0
        if k:
            ell, lr = self.ell[:k], self.lr
            for coef, rate in ((self._e1[:k], lr + ell), (self._e2[:k], lr - ell)):
                with np.errstate(under="ignore"):
                    far.append(real_window(coef * np.exp(np.maximum(t * rate, -UNDERFLOW)),
                                           rate, w))
            extra = float(self._e3_sum[k])
        ell, e = self.ell[k:], self.e[k:]
        b1, b2 = self.b1[k:], self.b2[k:]
        # rho^t times alpha, beta, gamma, from the stable rho^t S(t), rho^t C(t)
        ms, mc = self._sc(np.array([[float(t)]]), ell)
        ms, mc = ms[0], mc[0]
        m_t = math.exp(t * self.lr)
        alpha = b1 * ms + b2 * mc
        beta = b1 * (m_t + e * mc / 2) + 2 * b2 * ms
        gamma = b2 * m_t + e * alpha / 2
        y = w * w * e  # |y| <= CLOSE_KAPPA^2
        n = CLOSE_TERMS
        ypow = np.empty((len(y), n))
        ypow[:, 0] = 1.0
        ypow[:, 1:] = y[:, None]
        np.cumprod(ypow, axis=1, out=ypow)
        fact = np.array([math.factorial(j) for j in range(2 * n + 2)], dtype=float)
        poly = np.zeros(2 * n + 1)
        poly[0] = alpha.sum()
        poly[1::2] = w * (beta @ ypow) / fact[1:2 * n:2]
        poly[2::2] = 2.0 * w * w * (gamma @ ypow) / fact[2:2 * n + 1:2]
        xw = w * ell
        cosh = np.cosh(xw)
        err = float((np.abs(beta) * w * xw ** (2 * n) / fact[2 * n + 1] * cosh).sum()
                    + (2 * np.abs(gamma) * w * w * xw ** (2 * n) / (fact[2 * n + 1] * (2 * n + 2))
                       * cosh).sum())
        scale = float(np.abs(alpha).sum() + w * np.abs(beta).sum() + w * w * np.abs(gamma).sum())
        return poly, err + 1e-15 * scale * math.cosh(CLOSE_KAPPA), scale, extra, far
