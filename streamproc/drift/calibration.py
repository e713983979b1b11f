"""Threshold calibration: turn a false-alarm budget into CUSUM thresholds.

A one-sided CUSUM ``S = max(0, S + X)`` alarms when ``S > h``; its in-control average run
length (ARL, events between false alarms) depends on ``h`` and the distribution of the
increment ``X``. The drift detectors feed the CUSUMs increments whose in-control
distribution is known by construction (normal scores, prewhitened), so ``h`` can be solved
for from the ARL the budget allows:

* mean arms, ``X = e - k`` with ``e ~ N(0, 1)``: Siegmund's approximation (accurate to a
  few percent at these run lengths, checked against Brook-Evans in the tests);
* variance arm, ``X = e**2 - c``, and the Bernoulli arm: the Brook-Evans Markov chain.

>>> h = mean_threshold(k=0.25, arl=1e6)
>>> round(h, 2), round(mean_arl(0.25, h) / 1e6, 2)
(22.31, 1.0)
>>> round(variance_threshold(ratio=2.0, arl=1e6), 1)
42.9
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from numba import njit

from streamproc.stats import FloatArray, chi2_1_cdf

_SIEGMUND_SHIFT = 1.166  # overshoot correction, unit-variance increments


def mean_arl(k: float, h: float, shift: float = 0.0) -> float:
    """Siegmund's ARL of a CUSUM on ``e - k`` where ``e ~ N(shift, 1)``."""
    d = shift - k
    hp = h + _SIEGMUND_SHIFT
    if abs(d) < 1e-9:
        return hp * hp
    return (math.exp(-2.0 * d * hp) + 2.0 * d * hp - 1.0) / (2.0 * d * d)


def _solve_increasing(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """Bisection in ``x`` for an increasing ``f`` (in log space of the target)."""
    lt = math.log(target)
    while math.log(f(hi)) < lt:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if math.log(f(mid)) < lt:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-4 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=4096)
def mean_threshold(k: float, arl: float) -> float:
    """Threshold ``h`` of a CUSUM on ``e - k`` (``e ~ N(0, 1)``) with in-control ARL ``arl``."""
    return _solve_increasing(lambda h: mean_arl(k, h), arl, 0.0, 10.0)


def brook_evans_arl(cdf: Callable[[FloatArray], FloatArray], h: float, states: int = 300) -> float:
    """In-control ARL of ``S = max(0, S + X)`` alarming at ``S > h`` (Brook-Evans chain).

    ``cdf`` is the CDF of the increment ``X``. States sit at ``i * w`` with
    ``w = h / (states - 0.5)``; the chain is Toeplitz, so the CDF is evaluated on
    ``2 * states`` points only.
    """
    m = states
    w = h / (m - 0.5)
    d = np.arange(-(m - 1), m, dtype=np.float64)  # j - i
    upper = cdf((d + 0.5) * w)
    lower = cdf((d - 0.5) * w)
    i = np.arange(m)[:, None]
    j = np.arange(m)[None, :]
    idx = j - i + (m - 1)
    q = upper[idx] - lower[idx]
    q[:, 0] = upper[(m - 1) - np.arange(m)]  # to state 0: S + X < w / 2
    arl = np.linalg.solve(np.eye(m) - q, np.ones(m))
    return float(arl[0])


def _variance_cdf(ratio: float, scale: float) -> Callable[[FloatArray], FloatArray]:
    c = ratio * math.log(ratio) / (ratio - 1.0)
    return lambda x: chi2_1_cdf(x / scale + c)


def variance_offset(ratio: float) -> float:
    """``c`` of the variance arm ``X = e**2 - c`` (the likelihood-ratio reference value)."""
    return ratio * math.log(ratio) / (ratio - 1.0)


@functools.lru_cache(maxsize=256)
def variance_threshold(ratio: float, arl: float, scale: float = 1.0) -> float:
    """Threshold of a CUSUM on ``scale * (e**2 - c)``, ``e ~ N(0, 1)``, for in-control ``arl``."""
    cdf = _variance_cdf(ratio, scale)
    return _solve_increasing(lambda h: brook_evans_arl(cdf, h), arl, 0.0, 20.0 * scale)


def bernoulli_lattice(p0: float, p1: float, max_up: int = 40) -> tuple[int, int, float]:
    """Integer CUSUM steps ``(up, down, unit)`` approximating the Bernoulli log-likelihood ratio.

    An error adds ``up`` units, a correct label removes ``down`` units; one unit is ``unit``
    nats. Integer steps make the Markov chain of the statistic exact.
    """
    a = math.log(p1 / p0)
    b = -math.log((1.0 - p1) / (1.0 - p0))
    ratio = a / b
    down = max(1, round(max_up / ratio))
    up = max(1, round(down * ratio))
    return up, down, b / down


@njit(cache=True)
def _bernoulli_arl(up: int, down: int, h: int, p: float) -> float:  # pragma: no cover - numba
    # Solve (I - Q) L = 1 for the integer chain S -> S + up (prob p) or max(0, S - down);
    # banded with lower bandwidth ``down`` and upper bandwidth ``up``, diagonally dominant,
    # so Gaussian elimination without pivoting is stable.
    lo = down
    width = lo + up + 1
    a = np.zeros((h, width))  # a[i, lo + (j - i)] = A[i, j]
    rhs = np.ones(h)
    for i in range(h):
        a[i, lo] += 1.0
        if i + up < h:
            a[i, lo + up] -= p
        j = max(0, i - down)
        a[i, lo + (j - i)] -= 1.0 - p
    for col in range(h):
        piv = a[col, lo]
        for r in range(col + 1, min(h, col + lo + 1)):
            f = a[r, lo + (col - r)] / piv
            if f == 0.0:
                continue
            for c in range(col, min(h, col + up + 1)):
                a[r, lo + (c - r)] -= f * a[col, lo + (c - col)]
            rhs[r] -= f * rhs[col]
    x = np.zeros(h)
    for i in range(h - 1, -1, -1):
        acc = rhs[i]
        for c in range(i + 1, min(h, i + up + 1)):
            acc -= a[i, lo + (c - i)] * x[c]
        x[i] = acc / a[i, lo]
    return float(x[0])


def bernoulli_arl(p0: float, p1: float, h: int, p: float | None = None) -> float:
    """Exact ARL of the integer Bernoulli CUSUM (threshold ``h`` units) at error rate ``p``."""
    up, down, _ = bernoulli_lattice(p0, p1)
    return float(_bernoulli_arl(up, down, int(h), p0 if p is None else p))


@functools.lru_cache(maxsize=256)
def bernoulli_threshold(p0: float, p1: float, arl: float) -> int:
    """Smallest integer threshold (units) whose in-control ARL is at least ``arl``."""
    up, down, _ = bernoulli_lattice(p0, p1)
    lo, hi = 1, 2 * up
    while _bernoulli_arl(up, down, hi, p0) < arl:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _bernoulli_arl(up, down, mid, p0) < arl:
            lo = mid
        else:
            hi = mid
    return hi
