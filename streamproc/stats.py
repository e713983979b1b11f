"""The statistics streamproc's monitors and reports use, in numpy and :mod:`math` only (no
scipy): normal and chi-square distributions and lag-1 autocorrelation (drift detectors), the
two-proportion z, Welch's t and Mann-Whitney U tests (A/B reports), PSI and the two-sample
Kolmogorov-Smirnov test (rollout guardrails).

>>> round(float(norm_ppf(np.array([0.975]))[0]), 4)
1.96
>>> round(float(norm_cdf(np.array([1.96]))[0]), 4)
0.975
>>> round(chi2_isf(1e-3, 9), 1)  # exact: 27.88
28.1
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_erfc = np.frompyfunc(math.erfc, 1, 1)
_erf = np.frompyfunc(math.erf, 1, 1)

# Acklam's rational approximation of the normal quantile (relative error < 1.2e-9
# after one Halley refinement step).
_A = (
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.3577518672690,
    -30.66479806614716,
    2.506628277459239,
)
_B = (
    -54.47609879822406,
    161.5858368580409,
    -155.6989798598866,
    66.80131188771972,
    -13.28068155288572,
)
_C = (
    -7.784894002430293e-03,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
    2.938163982698783,
)
_D = (7.784695709041462e-03, 0.3224671290700398, 2.445134137142996, 3.754408661907416)


def norm_cdf(x: npt.ArrayLike) -> FloatArray:
    """Standard normal CDF, elementwise."""
    a = np.asarray(x, dtype=np.float64)
    return np.asarray(0.5 * _erfc(-a / math.sqrt(2.0)), dtype=np.float64)


def chi2_1_cdf(x: npt.ArrayLike) -> FloatArray:
    """CDF of a chi-square variable with one degree of freedom."""
    a = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    return np.asarray(_erf(np.sqrt(a / 2.0)), dtype=np.float64)


def norm_ppf(p: npt.ArrayLike) -> FloatArray:
    """Standard normal quantile, elementwise, for 0 < p < 1."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1.0 - 1e-16)
    out = np.empty_like(q)
    lo = q < 0.02425
    hi = q > 1.0 - 0.02425
    mid = ~(lo | hi)
    r = q[mid] - 0.5
    s = r * r
    num = ((((_A[0] * s + _A[1]) * s + _A[2]) * s + _A[3]) * s + _A[4]) * s + _A[5]
    den = ((((_B[0] * s + _B[1]) * s + _B[2]) * s + _B[3]) * s + _B[4]) * s + 1.0
    out[mid] = r * num / den
    for mask, sign in ((lo, 1.0), (hi, -1.0)):
        t = np.sqrt(-2.0 * np.log(np.where(sign > 0, q[mask], 1.0 - q[mask])))
        num = ((((_C[0] * t + _C[1]) * t + _C[2]) * t + _C[3]) * t + _C[4]) * t + _C[5]
        den = (((_D[0] * t + _D[1]) * t + _D[2]) * t + _D[3]) * t + 1.0
        out[mask] = sign * num / den
    # One Halley step against the exact CDF.
    e = norm_cdf(out) - q
    u = e * math.sqrt(2.0 * math.pi) * np.exp(out * out / 2.0)
    return np.asarray(out - u / (1.0 + out * u / 2.0), dtype=np.float64)


def norm_isf(alpha: float) -> float:
    """Upper-tail normal quantile: z with P(Z > z) = alpha."""
    return float(-norm_ppf(np.array([alpha]))[0])


def chi2_isf(alpha: float, dof: int) -> float:
    """Upper-tail chi-square quantile (Wilson-Hilferty approximation)."""
    z = norm_isf(alpha)
    c = 2.0 / (9.0 * dof)
    return float(dof * (1.0 - c + z * math.sqrt(c)) ** 3)


def lag1_autocorrelation(x: npt.ArrayLike) -> float:
    """Lag-1 autocorrelation of the finite values of ``x`` (0.0 when undefined)."""
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < 3:
        return 0.0
    a = a - a.mean()
    den = float(np.dot(a, a))
    if den <= 0.0:
        return 0.0
    return float(np.dot(a[1:], a[:-1]) / den)


# ---------------------------------------------------------------- tests of two samples


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """z statistic of p1 - p2 (pooled standard error) and its two-sided p-value.

    >>> z, p = two_proportion_z(60, 100, 40, 100)
    >>> round(z, 4), round(p, 5)
    (2.8284, 0.00468)
    """
    if n1 <= 0 or n2 <= 0:
        return math.nan, math.nan
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function (modified Lentz).
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b).

    >>> round(betainc(2, 3, 0.4), 6)  # 1 - 0.6**4 - 4 * 0.4 * 0.6**3
    0.5248
    """
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(ln_front)
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_two_sided(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom.

    >>> round(t_two_sided(2.0, 10), 5)
    0.07339
    """
    if math.isnan(t) or df <= 0:
        return math.nan
    return betainc(df / 2, 0.5, df / (df + t * t))


def welch_t(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[float, float, float]:
    """Welch's t statistic (mean a - mean b), its degrees of freedom and two-sided p-value."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan, math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se2 = vx + vy
    if se2 == 0:
        same = float(x.mean()) == float(y.mean())
        return (0.0 if same else math.inf), math.nan, (1.0 if same else 0.0)
    t = float((x.mean() - y.mean()) / math.sqrt(se2))
    df = float(se2**2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)))
    return t, df, t_two_sided(t, df)


def _ranks(values: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float]:
    # Average ranks (1-based) with ties, and the tie term sum(t^3 - t).
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    avg = upper - (counts - 1) / 2.0
    tie_term = float(np.sum(counts.astype(np.float64) ** 3 - counts))
    return avg[inverse], tie_term


def mann_whitney_u(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[float, float]:
    """U statistic of ``a`` (pairs where a > b, ties counting one half) and the two-sided
    p-value by the normal approximation with tie and continuity corrections.

    >>> mann_whitney_u([1, 2, 3], [4, 5, 6])[0], mann_whitney_u([4, 5, 6], [1, 2, 3])[0]
    (0.0, 9.0)
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan
    ranks, tie_term = _ranks(np.concatenate([x, y]))
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u, 1.0
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(var)
    return u, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


# ------------------------------------------------------------- distribution shift


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of ``actual`` against ``expected`` (quantile bins).

    Rule of thumb: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 significant.

    >>> rng = np.random.default_rng(1)
    >>> same = psi(rng.normal(size=5000), rng.normal(size=5000))
    >>> moved = psi(rng.normal(size=5000), rng.normal(0.5, 1, size=5000))
    >>> same < 0.02, moved > 0.2
    (True, True)
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if len(e) == 0 or len(a) == 0:
        return math.nan
    edges = np.unique(np.quantile(e, np.linspace(0, 1, bins + 1)[1:-1]))
    pe = np.bincount(np.searchsorted(edges, e, side="right"), minlength=len(edges) + 1) / len(e)
    pa = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1) / len(a)
    pe, pa = np.clip(pe, eps, None), np.clip(pa, eps, None)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def ks_2samp(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value.

    >>> d, p = ks_2samp([1, 2, 3, 4], [1, 2, 3, 4])
    >>> d, p
    (0.0, 1.0)
    >>> rng = np.random.default_rng(2)
    >>> d, p = ks_2samp(rng.normal(size=400), rng.normal(1, 1, size=400))
    >>> round(d, 2), p < 1e-10
    (0.38, True)
    """
    x = np.sort(np.asarray(a, dtype=np.float64))
    y = np.sort(np.asarray(b, dtype=np.float64))
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return math.nan, math.nan
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / n
    cdf_y = np.searchsorted(y, grid, side="right") / m
    d = float(np.max(np.abs(cdf_x - cdf_y)))
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    return d, _kolmogorov_sf(lam)


def _kolmogorov_sf(lam: float) -> float:
    if lam < 1e-3:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(1.0, max(0.0, 2 * total)))
