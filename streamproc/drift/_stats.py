"""Small numeric helpers: normal CDF / quantile, chi-square quantile, lag-1 autocorrelation.

Only numpy and the standard library, so the drift package needs no scipy.

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
