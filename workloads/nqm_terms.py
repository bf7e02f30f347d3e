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
Taylor polynomial of degree ``TAYLOR_DEGREE`` to within kappa^(p+1) / (p+1)! (times |z|, the
term's size at T). Oscillations put their groups' centres on the frequencies of an FFT
(2 pi k / N, N >= 2 W), so that the sum over groups is a few FFTs whatever their number (a
small family is evaluated directly). Close pairs are expanded through the addition theorems of
S and C (stable: no cancelling exponentials), or, once W ell > ``CLOSE_KAPPA`` (so T ell >= 1
for windows with W <= 4 T), as their three exponentials, which no longer cancel. A window thus
evaluates all W steps in O(W x groups x degree) (oscillations: O(degree x N log N)) instead of
O(W x K) (K ~ 10^4 directions). :class:`Stepped` directions (EMA only) are evaluated exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: exp(-UNDERFLOW) ~ 1e-304: a term that small is below the resolution of any loss (dropping
#: the positive ones keeps a lower bound valid; the negative ones are < 1e-300 in all).
UNDERFLOW = 700.0
#: Taylor groups of real exponentials: rates within TAYLOR_KAPPA / W of their group's centre,
#: polynomials of this degree: relative error <= 0.5^9 / 9! ~ 5.4e-9 per term.
TAYLOR_KAPPA = 0.5
TAYLOR_DEGREE = 8
#: Oscillations: frequencies gridded for FFTs, |s delta| <= pi / 2; this degree errs by < 7e-10.
#: Families of at most OSC_DIRECT terms are evaluated directly instead.
OSC_DEGREE = 14
OSC_DIRECT = 96
#: Close pairs: one polynomial in s while W |ell| <= CLOSE_KAPPA, with CLOSE_TERMS terms of the
#: series of S and of C (relative error < 1e-14 at the limit).
CLOSE_KAPPA = 4.0
CLOSE_TERMS = 16
#: Close real pairs with t0 ell >= EXP_FORM are bounded as three exponentials (which then no
#: longer cancel: rho^t is below e^-EXP_FORM, and rho^t e^(-t ell) below e^-(2 EXP_FORM), of
#: rho^t e^(t ell)); close complex pairs with t0 theta >= OSC_FORM as c + R cos(t theta - delta).
EXP_FORM = 3.0
OSC_FORM = 1.0
#: Equal-count buckets for the coarse bounds of close pairs.
BUCKETS = 32
#: Groups of exponentials for their coarse bound: rates within a factor exp(RATE_GROUP).
RATE_GROUP = 0.05
#: In a window, terms already below exp(-DROP) x |coefficient| at its start are not grouped: their
#: sizes go into the error bound instead; so are terms below TINY in absolute value (no loss is
#: that small, and arithmetic on subnormal numbers is ~100x slower).
DROP = 45.0
TINY = 1e-250


def _sinc(x: np.ndarray) -> np.ndarray:
    """sin(x)/x, 1 at 0."""
    return np.where(np.abs(x) < 1e-6, 1.0 - x * x / 6.0, np.sin(x) / np.where(x == 0, 1, x))


def taylor_moments(z: np.ndarray, d: np.ndarray, starts: np.ndarray, degree: int,
                   imaginary: bool) -> np.ndarray:
    """M_gk = sum_{j in g} z_j (i? d_j)^k / k!, k = 0 .. degree, for groups of consecutive terms
    beginning at ``starts``: shape (degree + 1, groups)."""
    powers = np.empty((degree + 1, len(d)))
    powers[0] = 1.0
    for k in range(1, degree + 1):
        np.multiply(powers[k - 1], d / k, out=powers[k])
    m = np.add.reduceat(powers * z, starts, axis=1)
    if imaginary:
        m = m * (1j ** np.arange(degree + 1))[:, None]
    return m


def taylor_groups(z: np.ndarray, x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Group terms z_j exp(s x_j), s in [0, w), by their real rates x_j (monotone in j).

    Returns the centres x_g (one per group), the coefficients M ((degree + 1) x groups) with
    sum_{j in g} z_j exp(s x_j) = exp(s x_g) sum_k M_kg (s / w)^k + error, and the bound
    sum_j |z_j| kappa^(p+1) / (p+1)! on the error's absolute value (valid as all rates and
    centres are <= 0: exp(s x_g) |exp(s d) - Taylor| <= |s d|^(p+1)/(p+1)! x
    max(e^(s x_g), e^(s x_j))).
    """
    width = 2.0 * TAYLOR_KAPPA / w
    key = np.floor(x / width)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    centres = (key[starts] + 0.5) * width
    sizes = np.diff(np.r_[starts, len(x)])
    d = (x - np.repeat(centres, sizes)) * w  # |d| <= kappa
    m = taylor_moments(z, d, starts, TAYLOR_DEGREE, imaginary=False)
    err = float(np.abs(z).sum()) * TAYLOR_KAPPA ** (TAYLOR_DEGREE + 1) / math.factorial(
        TAYLOR_DEGREE + 1)
    return centres, m, err


def real_values(centres: np.ndarray, m: np.ndarray, w: int) -> np.ndarray:
    """sum_g exp(s x_g) sum_k M_kg (s / w)^k at s = 0 .. w-1."""
    if not len(centres):
        return np.zeros(w)
    s = np.arange(w, dtype=np.float64)
    vander = np.vander(s / w, len(m), increasing=True)
    return (np.exp(np.outer(s, centres)) * (vander @ m)).sum(axis=1)


def real_window(z: np.ndarray, rates: np.ndarray, w: int,
                ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Taylor groups of sum_j z_j exp(s rates_j) (rates real, monotone, <= 0) over s in [0, w),
    the terms smaller than exp(-DROP) x max |z| left out and added to the error bound.
    Returns centres, coefficients, error bound, sum |z|."""
    size = np.abs(z)
    scale = float(size.sum())
    keep = size > max(math.exp(-DROP) * (size.max() if len(z) else 0.0), TINY)
    dropped = scale - float(size[keep].sum())
    if not keep.any():
        return np.empty(0), np.empty((TAYLOR_DEGREE + 1, 0)), dropped, scale
    centres, m, err = taylor_groups(z[keep], rates[keep], w)
    return centres, m, err + dropped + 1e-15 * scale, scale


def cos_min(amp: np.ndarray, phi: np.ndarray, psi: np.ndarray, t0: float, t1: float) -> float:
    """sum_j min over t in [t0, t1] of amp_j cos(t phi_j + psi_j) (phi_j >= 0): -amp_j where a
    trough (an odd multiple of pi) lies in the phase interval, else the smaller end."""
    x0, x1 = t0 * phi + psi, t1 * phi + psi
    inv_two_pi = 1 / (2 * math.pi)
    trough = (np.floor((x1 - math.pi) * inv_two_pi + 1e-9)
              >= np.ceil((x0 - math.pi) * inv_two_pi - 1e-9))
    ends = np.flatnonzero(~trough)  # the cosines are the cost: only where there is no trough
    if len(ends) == len(amp):
        return float(amp @ np.minimum(np.cos(x0), np.cos(x1)))
    return float(amp[ends] @ np.minimum(np.cos(x0[ends]), np.cos(x1[ends]))
                 - amp[trough].sum())


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
        self._jensen: tuple[np.ndarray, ...] | None = None  # built by the first coarse()

    def _groups(self) -> None:
        """Aggregates for :meth:`coarse`: terms grouped by log(-rate) in steps of RATE_GROUP.
        Positive part of a group: C = sum c, mean rate lbar = sum c l / C (Jensen:
        sum c e^(tl) >= C e^(t lbar)); negative part: the chord of e^(tl) between the group's
        extreme rates (e^(tl) is convex in l) splits sum |c| into weights A at l_lo, B at l_hi."""
        finite = np.isfinite(self.l)  # a rate of -inf (1 - a = 0) is 0 from t = 1 on
        c, l = self.c[finite], self.l[finite]
        if not len(l):
            self._jensen = self._chord = (np.empty(0),) * 4
            return
        key = np.floor(np.log(-l) / RATE_GROUP)
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        sizes = np.diff(np.r_[starts, len(l)])
        pos, neg = np.maximum(c, 0.0), np.minimum(c, 0.0)
        cp = np.add.reduceat(pos, starts)
        lbar = np.add.reduceat(pos * l, starts) / np.where(cp > 0, cp, 1.0)
        self._jensen = (cp, lbar)
        l_hi, l_lo = l[starts], l[starts + sizes - 1]  # rates sorted descending
        span = l_hi - l_lo
        wa = np.repeat(l_hi, sizes) - l
        wa = np.where(wa > 0, wa / np.repeat(np.where(span > 0, span, 1.0), sizes), 0.0)
        self._chord = (np.add.reduceat(neg * wa, starts), np.add.reduceat(neg * (1 - wa), starts),
                       l_lo, l_hi)

    def coarse(self, t0: float, t1: float) -> float:
        """A lower bound from the groups of :meth:`_groups` (looser than :meth:`lower` by a
        relative ~(t (l_hi - l_lo))^2 / 8 per group, O(groups))."""
        if self._jensen is None:
            self._groups()
        cp, lbar = self._jensen[:2]
        a, b, l_lo, l_hi = self._chord
        with np.errstate(under="ignore"):
            return float(cp @ np.exp(np.maximum(t1 * lbar, -UNDERFLOW))
                         + a @ np.exp(np.maximum(t0 * l_lo, -UNDERFLOW))
                         + b @ np.exp(np.maximum(t0 * l_hi, -UNDERFLOW)))

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
    """sum_j A_j cos(t phi_j + psi_j), A_j >= 0, phi_j in (0, 2 pi) (twice the argument of an
    eigenvalue in the upper half-plane): the oscillating part of complex-conjugate pairs sharing
    one modulus (the caller multiplies by rho^t)."""

    def __init__(self, amp: np.ndarray, phi: np.ndarray, psi: np.ndarray) -> None:
        order = np.argsort(-phi, kind="stable")  # fastest first
        self.amp, self.phi, self.psi = amp[order], phi[order], psi[order]
        self._key = -self.phi  # ascending
        self._amp_sum = np.r_[0.0, np.cumsum(self.amp)]
        self.total = float(self._amp_sum[-1])
        self._last: tuple[int, np.ndarray, int] | None = None
        self._rotations: dict[int, np.ndarray] = {}
        self._grids: dict[int, tuple] = {}

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
        return -float(self._amp_sum[k]) + cos_min(self.amp[k:], self.phi[k:], self.psi[k:], t0, t1)

    def coarse(self) -> float:
        """-sum A_j: a lower bound at every t."""
        return -self.total

    def _phases(self, t: int) -> np.ndarray:
        """z_j = A_j exp(i (t phi_j + psi_j)); from the previous window's by one rotation when
        windows follow one another (recomputed every 32 windows: rounding stays ~1e-14)."""
        last = self._last
        if last is not None and t > last[0] and last[2] < 32:
            step = t - last[0]
            rot = self._rotations.get(step)
            if rot is None:
                rot = self._rotations[step] = np.exp(1j * step * self.phi)
            z, chain = last[1] * rot, last[2] + 1
        else:
            z, chain = self.amp * np.exp(1j * (t * self.phi + self.psi)), 0
        self._last = (t, z, chain)
        return z

    def window(self, t: int, w: int) -> tuple[np.ndarray, float, float]:
        """The sum (without the modulus) at steps t .. t + w - 1, to within the returned error
        bound, and sum A_j (a size, for rounding).

        Terms are grouped on a grid of frequencies 2 pi k / N (N >= 2 w, a power of two): each
        phi_j within pi / N of its bin, so |s delta| <= pi / 2 and the group's Taylor polynomial
        of degree OSC_DEGREE errs by <= (pi/2)^15 / 15! ~ 7e-10 x A_j. Then
        sum_g exp(i s phi_g) P_g(s / w) = sum_k (s / w)^k N ifft(M_k)[s]: OSC_DEGREE + 1 FFTs,
        whatever the number of groups.
        """
        z = self._phases(t)
        if len(z) <= OSC_DIRECT:  # few terms: exactly, through two tables of rotations
            b = max(1, math.isqrt(w))
            hi = np.exp(1j * np.outer(np.arange(0, w, b), self.phi)) * z
            lo = np.exp(1j * np.outer(np.arange(b), self.phi))
            values = np.einsum("aj,bj->ab", hi, lo).reshape(-1)[:w].real
            return values, 1e-14 * self.total, self.total
        n = 1 << (2 * w - 1).bit_length()
        grid = self._grids.get(w)
        if grid is None:  # depends on w only: kept for the next window of this length
            bins = np.rint(self.phi * (n / (2 * math.pi))).astype(np.int64)  # non-increasing
            starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
            d = (self.phi - bins * (2 * math.pi / n)) * w  # |d| <= pi w / n <= pi / 2
            powers = np.ones((OSC_DEGREE + 1, len(d)))
            for k in range(1, OSC_DEGREE + 1):
                np.multiply(powers[k - 1], d / k, out=powers[k])
            grid = self._grids[w] = (bins[starts], starts, powers,
                                     (1j ** np.arange(OSC_DEGREE + 1))[:, None])
        cols, starts, powers, ik = grid
        m = np.add.reduceat(powers * z, starts, axis=1) * ik
        # The groups' bins are distinct and in [0, n] (phi sorted, in (0, 2 pi)): assigned into
        # n + 1 columns, then bin n (the frequency 2 pi) added onto bin 0, the same frequency.
        spectrum = np.zeros((OSC_DEGREE + 1, n + 1), dtype=complex)
        spectrum[:, cols] = m
        spectrum[:, 0] += spectrum[:, n]
        f = np.fft.ifft(spectrum[:, :n], axis=1)[:, :w].real * n  # u is real: Re of the sum
        u = np.arange(w) / w
        acc = f[OSC_DEGREE]
        for k in range(OSC_DEGREE - 1, -1, -1):  # Horner in u
            acc = acc * u + f[k]
        kappa = math.pi * w / n
        err = self.total * kappa ** (OSC_DEGREE + 1) / math.factorial(OSC_DEGREE + 1)
        return acc, err + 1e-14 * self.total, self.total


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
            # positive and negative parts, rates, running sums of the negative parts
            self._exp_parts = [(np.maximum(c, 0.0), np.minimum(c, 0.0), log_rho + sign * e,
                                np.r_[0.0, np.cumsum(np.minimum(c, 0.0))])
                               for c, sign in ((self._e1, 1.0), (self._e2, -1.0))]
        else:
            # b1 S + b2 C = 2 b2/theta^2 + R cos(t theta - delta) (used where t theta >= OSC_FORM)
            with np.errstate(divide="ignore", invalid="ignore"):
                const, sin_c = 2 * self.b2 / self.ell ** 2, self.b1 / self.ell
                amp = np.hypot(const, sin_c)
                self._osc_form = (amp, -np.arctan2(sin_c, -const))
                self._osc_sums = (np.r_[0.0, np.cumsum(const)],
                                  np.r_[0.0, np.cumsum(np.abs(const) + amp)])
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
        if self.is_real:
            self._bpeak = self._peak_of(self._bhi)
            self._bell = np.vstack([self._blo, self._blo, self._bhi, self._bhi, self._bhi,
                                    self._bhi])

    def _rows(self, t0: float, t1: float) -> np.ndarray:
        """Times for the coarse bound of real pairs: t0, t1 (smallest ell of each bucket),
        t0, t1, the peak of rho^t S and that of rho^t C (largest ell), clipped to [t0, t1]."""
        nb = len(self._bpeak)
        rows = np.empty((6, nb))
        rows[[0, 2]], rows[[1, 3]] = t0, t1
        np.clip(self._bpeak, t0, t1, out=rows[4])
        np.clip(2 * self._bpeak, t0, t1, out=rows[5])
        return rows

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
                mt = np.exp(np.maximum(t * lr, -UNDERFLOW))
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
            # rows: t0, t1 at the buckets' smallest ell; t0, t1 and the peaks at the largest
            ms, mc = self._sc(self._rows(t0, t1), self._bell)
            return float(b1p @ np.minimum(ms[0], ms[1]) + b1n @ ms[2:5].max(axis=0)
                         + b2p @ np.minimum(mc[0], mc[1]) + b2n @ mc[[2, 3, 5]].max(axis=0))
        # |S| <= min(t, 1/theta), 0 <= C <= min(t^2, 4/theta^2); b2 >= 0 terms are >= 0
        lo = np.maximum(self._blo, 1e-300)  # theta = 0: only the t^k envelopes
        with np.errstate(over="ignore"):
            s_env = np.minimum(self._max_rho_tk(t0, t1, 1), math.exp(t0 * self.lr) / lo)
            c_env = np.minimum(self._max_rho_tk(t0, t1, 2), 4 * (math.exp(t0 * self.lr) / lo) / lo)
        return float(-(b1p - b1n) @ s_env + b2n @ c_env)

    def _peak_of(self, ell: np.ndarray) -> np.ndarray:
        lr = self.lr
        return np.where(ell > 1e-12, np.arctanh(np.minimum(ell / -lr, 1 - 1e-16))
                        / np.maximum(ell, 1e-300), 1.0 / -lr)

    def fine_cost(self, t0: float) -> int:
        """How many pairs :meth:`lower` bounds one by one."""
        return len(self.ell)

    def lower(self, t0: float, t1: float) -> tuple[float, float]:
        """(a lower bound of the sum over [t0, t1] except a part c rho^t, c) term by term."""
        if self.is_real:
            return self._lower_real(t0, t1)
        # pairs with t0 theta >= OSC_FORM (a prefix): 2 b2/theta^2 + R cos(t theta - delta),
        # summed into c; the rest by envelopes. Rounding allowance: the sums' and the phases'
        # (~1e-16 x (30 + t theta) x sum of the terms' sizes).
        k = int(np.searchsorted(self._key, -OSC_FORM / t0, side="right"))
        amp, psi = self._osc_form
        const, size = self._osc_sums
        c = float(const[k]) - 1e-15 * (30 + t1 * float(self.ell[0])) * float(size[k])
        if k:
            c += cos_min(amp[:k], self.ell[:k], psi[:k], t0, t1)
        return (self._lower_cplx(t0, t1, k) if k < len(self.ell) else 0.0), c

    def _lower_real(self, t0: float, t1: float) -> tuple[float, float]:
        # pairs with t0 ell >= EXP_FORM (a prefix): three monotone exponentials each
        k = int(np.searchsorted(self._key, -EXP_FORM / t0, side="right"))
        lb = self._lower_exp(k, t0, t1) if k else 0.0
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

    def _lower_exp(self, k: int, t0: float, t1: float) -> float:
        """Pairs 0 .. k-1 as exponentials rho^t e^(+-t ell) (the rho^t part is returned by
        :meth:`lower` separately): positive parts at t1, negative at t0, each over the terms
        not yet below exp(-DROP) (a prefix for e^(t ell), a suffix for e^(-t ell)); the negative
        parts of the others count as exp(-DROP) times their coefficients."""
        lr, key = self.lr, self._key
        lb = 0.0
        for j, (cp, cn, rate, ncum) in enumerate(self._exp_parts):
            if j == 0:  # rho^t e^(t ell): alive while ell > -log rho - DROP / t
                a1 = min(k, int(np.searchsorted(key, lr + DROP / t1)))
                a0 = min(k, int(np.searchsorted(key, lr + DROP / t0)))
                lb += float(cp[:a1] @ np.exp(t1 * rate[:a1]) + cn[:a0] @ np.exp(t0 * rate[:a0]))
                lb += math.exp(-DROP) * float(ncum[k] - ncum[a0])
            else:  # rho^t e^(-t ell): alive while ell < log rho + DROP / t
                a1 = min(k, int(np.searchsorted(key, -lr - DROP / t1, side="right")))
                a0 = min(k, int(np.searchsorted(key, -lr - DROP / t0, side="right")))
                lb += float(cp[a1:k] @ np.exp(t1 * rate[a1:k]) + cn[a0:k] @ np.exp(t0 * rate[a0:k]))
                lb += math.exp(-DROP) * float(ncum[a0])
        return lb

    def _lower_cplx(self, t0: float, t1: float, k: int) -> float:
        """Envelope bound of pairs k.. (t0 theta < OSC_FORM)."""
        lr = self.lr
        b1, b2, th = self.b1[k:], self.b2[k:], self.ell[k:]
        if t0 >= 2 / -lr:
            # past the peaks of rho^t t and rho^t t^2:
            # |b1 S| + |b2 C| <= rho^t0 (t0 |b1| + t0^2 |b2|)
            total = math.exp(t0 * lr) * (t0 * self._abs[0] + t0 * t0 * self._abs[1])
            if total <= 1e-9:
                return -total
        mt0, mt1 = math.exp(t0 * lr), math.exp(t1 * lr)
        # While t theta <= pi, S = sin(t theta)/theta >= 0 is concave (min at an end, max at
        # pi/(2 theta)) and C = 2 (1 - cos t theta)/theta^2 increases; past that, envelopes
        # |S| <= min(t, 1/theta), 0 <= C <= min(t^2, 4/theta^2) times max rho^t t^k.
        inside = t1 * th <= math.pi
        th_ = np.maximum(th, 1e-300)  # theta = 0: sin(t th_)/th_ = t, the limit
        tm = np.clip(math.pi / 2 / th_, t0, t1)
        # one sin for: S(t0), S(t1), S(tm), and sin(t theta / 2) for C = (2 sin(t th/2)/th)^2
        sines = np.sin(np.vstack([t0 * th_, t1 * th_, tm * th_, t0 / 2 * th_, t1 / 2 * th_])) / th_
        s0, s1, s_top = sines[0], sines[1], sines[2]
        c1 = 4 * sines[4] ** 2
        env1 = np.minimum(self._max_rho_tk(t0, t1, 1), mt0 / th_)
        env2 = np.minimum(self._max_rho_tk(t0, t1, 2), 4 * (mt0 / th_) / th_)
        s_lo = np.where(inside, np.minimum(s0, s1), -np.minimum(t1, 1 / th_))
        c_lo = np.where(inside, 4 * sines[3] ** 2, 0.0)
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
        n = _series_terms(w * float(self.ell[k]) if len(self.ell) > k else 0.0)
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


def _series_terms(x: float) -> int:
    """Terms of the series of S and C (in (s ell)^2) for |s ell| <= x: the first n with
    x^(2n) / (2n + 1)! cosh(x) <= 1e-13 (far below BAND), at most CLOSE_TERMS (x = CLOSE_KAPPA)."""
    for n in range(2, CLOSE_TERMS):
        if x ** (2 * n) / math.factorial(2 * n + 1) * math.cosh(x) <= 1e-13:
            return n
    return CLOSE_TERMS


@dataclass
class Bracket:
    """Terms sharing one modulus: rho^t (coef + the oscillations' sum), plus close pairs, whose
    values carry rho^t themselves but whose bounds and windows add to ``coef``."""

    log_rho: float
    coef: float = 0.0
    oscs: list[Oscillations] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)


class Stepped:
    """sum_i w_i e3' B_i^t D_i B_i^t' e3 for a few directions, each by exact powers of its 3x3
    matrix B_i (binary powering; doubling for a window): the directions whose modal expansion
    would cancel badly, or alternate in sign.

    Lower bound for t >= t0: each direction's transient is sum_k C_k mu_k^t, so it is at least
    -sum_k |C_k| |mu_k|^t0 (twice that: the computed C_k may be off by their cancellation, by
    far less than themselves), and at least -S_i (a second moment is >= 0; S_i its steady
    state), which is all that is used where the C_k are not finite.
    """

    def __init__(self, b: np.ndarray, d: np.ndarray, weight: np.ndarray, steady: np.ndarray,
                 env_coef: np.ndarray, env_log: np.ndarray) -> None:
        self.b, self.d, self.w = b, d, weight
        self._steady = steady
        finite = np.isfinite(env_coef).all(axis=1)  # a rate of -inf: the mode is 0 from t = 1
        self._env = (np.where(finite[:, None], 2 * np.abs(env_coef), 0.0),
                     np.where(np.isfinite(env_log), env_log, -np.inf), finite)

    def __len__(self) -> int:
        return len(self.w)

    def _rows(self, t: int) -> np.ndarray:
        """e3' B^t for every direction, (n, 3)."""
        rows = np.zeros((len(self.w), 3))
        rows[:, 2] = 1.0
        power = self.b
        while t:
            if t & 1:
                rows = np.einsum("ni,nij->nj", rows, power)
            t >>= 1
            if t:
                power = power @ power
        return rows

    def _quad(self, rows: np.ndarray) -> np.ndarray:
        """sum_i w_i r_i D_i r_i' for rows (..., n, 3)."""
        return np.einsum("...ni,nij,...nj,n->...", rows, self.d, rows, self.w)

    def values(self, t: np.ndarray) -> np.ndarray:
        """The sum at each t (1-D array of steps)."""
        return np.array([self._quad(self._rows(int(x))) for x in t])

    def lower(self, t0: float) -> float:
        """A lower bound at every t >= t0."""
        coef, log, finite = self._env
        with np.errstate(under="ignore"):
            env = (coef * np.exp(t0 * log)).sum(axis=1)
        return -float(self.w @ np.where(finite, np.minimum(env, self._steady), self._steady))

    def window(self, t: int, w: int) -> np.ndarray:
        """The sum at steps t .. t + w - 1 (exact up to rounding)."""
        rows = np.empty((w, len(self.w), 3))
        rows[0] = self._rows(t)
        power, k = self.b, 1
        while k < w:  # rows[k:2k] = rows[:k] B^k
            j = min(k, w - k)
            rows[k:k + j] = np.einsum("sni,nij->snj", rows[:j], power)
            power, k = power @ power, 2 * k
        return self._quad(rows)
