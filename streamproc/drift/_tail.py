"""Numba kernel of the ECOD-style tail score (streamproc.drift.profile.TailScorer): per value
a table lookup and a linear interpolation, one pass over a batch."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

CONTINUOUS = 0
INTEGER = 1
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@njit(cache=True, inline="always")
def log_phi_tail(z: float) -> float:  # pragma: no cover - compiled
    """``log Phi(z)`` for ``z <= -3`` (the asymptotic series; past the profile's grid)."""
    z2 = z * z
    return -0.5 * z2 - math.log(-z) - _HALF_LOG_2PI + math.log(1.0 - 1.0 / z2 + 3.0 / (z2 * z2))


@njit(cache=True, nogil=True)
def tail_score_kernel(  # pragma: no cover - compiled
    x: npt.NDArray[np.floating],  # (n, d)
    kind: npt.NDArray[np.int64],  # (d,) CONTINUOUS or INTEGER
    center: npt.NDArray[np.float64],  # (d,) continuous: tables in asinh((x - center) * inv)
    inv: npt.NDArray[np.float64],
    lo: npt.NDArray[np.float64],  # (d,) first table point (transformed; integer: x)
    step_inv: npt.NDArray[np.float64],  # (d,) table points per (transformed) unit
    knot_lo: npt.NDArray[np.float64],  # (d,) the outer knots, in x
    knot_hi: npt.NDArray[np.float64],
    size: npt.NDArray[np.int64],  # (d,) table points used
    left: npt.NDArray[np.float64],  # (d, C) log P(X <= v) at the table points
    right: npt.NDArray[np.float64],  # (d, C) log P(X >= v)
    g_lo: npt.NDArray[np.float64],  # (d,) normal score at lo / at the last point
    g_hi: npt.NDArray[np.float64],
    lo_scale: npt.NDArray[np.float64],  # (d,) x-units per score unit past the ends
    hi_scale: npt.NDArray[np.float64],
    floor: npt.NDArray[np.float64],  # (d,) log of the smallest probability
    right_skew: npt.NDArray[np.bool_],
    out: npt.NDArray[np.float64],  # (n,)
) -> None:
    n, d = x.shape
    for i in range(n):
        sl = 0.0
        sr = 0.0
        sa = 0.0
        for j in range(d):
            v = x[i, j]
            if math.isnan(v):  # a missing value scores 0
                continue
            m = size[j] - 1
            if kind[j] == INTEGER:
                u = (v - lo[j]) * step_inv[j]
                f = math.floor(u)
                c = math.ceil(u)
                lv = floor[j] if f < 0 else (0.0 if f > m else left[j, int(f)])
                rv = 0.0 if c < 0 else (floor[j] if c > m else right[j, int(c)])
            elif v < knot_lo[j]:
                lv = max(log_phi_tail(min(g_lo[j] + (v - knot_lo[j]) / lo_scale[j], -3.0)),
                         floor[j])  # fmt: skip
                rv = right[j, 0]
            elif v > knot_hi[j]:
                lv = left[j, m]
                z = g_hi[j] + (v - knot_hi[j]) / hi_scale[j]
                rv = max(log_phi_tail(min(-z, -3.0)), floor[j])
            else:
                u = min(max((math.asinh((v - center[j]) * inv[j]) - lo[j]) * step_inv[j], 0.0),
                        m - 1e-9)  # fmt: skip
                k = int(u)
                w = u - k
                lv = left[j, k] * (1.0 - w) + left[j, k + 1] * w
                rv = right[j, k] * (1.0 - w) + right[j, k + 1] * w
            sl -= lv
            sr -= rv
            sa -= rv if right_skew[j] else lv
        out[i] = max(sl, sr, sa)
