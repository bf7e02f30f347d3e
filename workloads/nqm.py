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
from threadpoolctl import ThreadpoolController

from tuner.workload import Reporter, TrialRequest, TrialResult, Workload
from workloads.nqm_terms import Close, Exponentials, Oscillations, _sinc, _sinhc, real_values

#: Intervals of at most this many steps (and at most 4 x their first step) are not bisected
#: further: all their steps are enclosed at once by a Taylor-group window (nqm_terms.py).
WINDOW = 2048
#: Half-width, relative to the size of the terms, of the band around the target inside which
#: a window's enclosure is not trusted and the step is evaluated exactly.
BAND = 1e-10
#: The coarse bound (from aggregates) is tried before the fine one where the fine one would bound
#: more than this many terms one by one.
COARSE_FIRST = 256
#: Window products are small matrices: one BLAS thread (no waiting on a descheduled second one).
_BLAS = ThreadpoolController()


@dataclass
class NQMOptions:
    """Options of the ``nqm`` workload."""

    dimensions: int = 10_000  # K: h_i = 1/i, i = 1..K
    precondition_power: float = 0.0  # p: preconditioner H^-p, 0 <= p < 1


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
      q(2).

    All the c3 m^t and P m^t terms share the rate m and are summed into one coefficient.
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
        self.bound_evals = self.windows = 0
        self.log_m = -math.inf
        self.c_m = 0.0  # coefficient of m^t
        self.osc: Oscillations | None = None
        self.close: list[Close] = []
        if self.diverged:
            return
        hh = 0.5 * h
        if m == 0.0:
            sxx = n / (a * (2.0 - a))
            self.loss_star = float(hh @ sxx)
            with np.errstate(divide="ignore"):  # a == 1: the term is 0 for t >= 1
                self.pool = Exponentials(hh * (1.0 - sxx), 2.0 * np.log(np.abs(1.0 - a)))
            return
        self._momentum(hh, a, n, m, omm)

    def _momentum(self, hh: np.ndarray, a: np.ndarray, n: np.ndarray, m: float,
                  omm: float) -> None:
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
        c_m = 0.0

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
            self.osc = Oscillations(hh[x] * 2 * np.abs(cc1), 2 * np.angle(lc), np.angle(cc1))
            c_m += float(hh[x] @ cc3)

        # Close: m^t (P + b1 S + b2 C), from q(0) = Dxx, q(1) = g11, q(2) = g11 tr^2 + 2 g12 tr + g22.
        for is_real in (True, False):
            sel = close & ((disc > 0) if is_real else (disc <= 0))
            if not sel.any():
                continue
            e = ell[sel]
            x1, x2 = e, 2 * e
            if is_real:
                s_1, s_2, c_1, c_2 = _sinhc(x1), 2 * _sinhc(x2), _sinhc(x1 / 2) ** 2, 4 * _sinhc(x2 / 2) ** 2
            else:
                s_1, s_2, c_1, c_2 = _sinc(x1), 2 * _sinc(x2), _sinc(x1 / 2) ** 2, 4 * _sinc(x2 / 2) ** 2
            q0 = dxx[sel]
            q1 = g11[sel]
            q2 = g11[sel] * tr[sel] ** 2 + 2 * g12[sel] * tr[sel] + g22[sel]
            r1, r2 = q1 / m - q0, q2 / (m * m) - q0
            det = s_1 * c_2 - s_2 * c_1
            b1 = (r1 * c_2 - r2 * c_1) / det
            b2 = (s_1 * r2 - s_2 * r1) / det
            self.close.append(Close(hh[sel] * b1, hh[sel] * b2, e, is_real, lm))
            c_m += float(hh[sel] @ q0)
        self.c_m = c_m

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
                if self.m > 0:
                    mt = np.exp(tt * self.log_m)
                    v += self.c_m * mt
                    if self.osc is not None:
                        v += mt * self.osc.values(tt)
                    for fam in self.close:
                        v += fam.values(tt)
            out[idx] += v
        return out

    def _bound(self, t0: int, t1: int, fine: bool) -> float:
        """A certified lower bound of L(t) for all integers t in [t0, t1], t0 >= 1."""
        self.bound_evals += 1
        with np.errstate(under="ignore", invalid="ignore", over="ignore", divide="ignore"):
            lb = self.loss_star + (self.pool.lower(t0, t1) if fine else self.pool.coarse(t0, t1))
            if self.m > 0:
                c = self.c_m
                for fam in self.close:
                    if fine:
                        part, extra = fam.lower(t0, t1)
                        lb, c = lb + part, c + extra
                    else:
                        lb += fam.coarse(t0, t1)
                if self.osc is not None:
                    c += self.osc.lower(t0, t1) if fine else self.osc.coarse()
                lb += c * math.exp((t1 if c >= 0 else t0) * self.log_m)
        # rounding in the sums: stay on the safe side
        return lb - 1e-12 * (abs(lb) + self.loss0)

    def lower_bound(self, t0: int, t1: int) -> float:
        """A certified lower bound of L(t) for all integers t in [t0, t1], t0 >= 1."""
        return self._bound(t0, t1, fine=True)

    def _excluded(self, t0: int, t1: int, target: float) -> bool:
        """Whether L(t) > target provably for all t in [t0, t1]: the coarse bound first where
        the fine one is costly (many terms to bound one by one), then the fine one."""
        if self._fine_cost(t0) > COARSE_FIRST and self._bound(t0, t1, fine=False) > target:
            return True
        return self._bound(t0, t1, fine=True) > target

    def _fine_cost(self, t0: int) -> int:
        """How many terms the fine bound at t0 handles one by one beyond plain exponentials."""
        return (len(self.pool) + (0 if self.osc is None else len(self.osc))
                + sum(f.fine_cost(t0) for f in self.close))

    def first_hit(self, target: float, max_steps: int) -> int | None:
        """The smallest t in [0, max_steps] with L(t) <= target, or None (see module doc)."""
        if self.diverged:
            return None
        if self.loss0 <= target:
            return 0
        lo = 1
        while lo <= max_steps:
            # far from the target a block 8 x longer is often excluded at once
            hi = min(8 * lo - 1, max_steps)
            if hi > 2 * lo - 1 and self._excluded(lo, hi, target):
                lo = hi + 1
                continue
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
            if b - a + 1 <= min(WINDOW, 4 * a):
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
        if self.m > 0:
            c = self.c_m
            mt = math.exp(t * self.log_m)
            ms = np.exp(np.arange(w) * self.log_m)
            u = np.arange(w) / w
            for fam in self.close:
                poly, e, size, extra, far = fam.window(t, w)
                v += ms * np.polynomial.polynomial.polyval(u, poly)
                err, scale, c = err + e, scale + size, c + extra
                for centres, coef, e, size in far:
                    v += real_values(centres, coef, w)
                    err, scale = err + e, scale + size
            if self.osc is not None:
                osc, e, size = self.osc.window(t, w)
                v += mt * ms * osc
                err, scale = err + e * mt, scale + size * mt
            v += c * mt * ms
            scale += abs(c) * mt
        return v, np.full(w, err + BAND * (scale + self.loss_star))

    def scan(self, a: int, b: int, target: float) -> int | None:
        """The first t in [a, b] with L(t) <= target, or None: all steps enclosed at once,
        steps within the error bound of the target evaluated exactly."""
        self.windows += 1
        with _BLAS.limit(limits=1, user_api="blas"), np.errstate(under="ignore"):
            v, err = self.enclose(a, b - a + 1)
        for s in np.flatnonzero(v - err <= target):
            if v[s] + err[s] <= target or self.loss(a + int(s))[0] <= target:
                return a + int(s)
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
