"""Numba kernel of the ECOD-style tail score (streamproc.drift.profile.TailScorer): per value
a table lookup and a linear interpolation, column by column over a batch.

A continuous column's table is uniform in ``w``, the bits of the float32 ``1 + |t|`` (``t``
the value's distance from the median in units of ``scale / 16``) minus those of ``1.0``,
signed like ``t``: a piecewise-linear ``2**23 * log2(1 + |t|)``, fine in the body and
log-like in the tails, computed with no ``log``, ``asinh`` or ``sqrt`` (an integer
subtraction of the bits). Cells are ``2**shift`` bit steps, aligned so that none straddles an
octave: within a cell ``w`` is linear in the value, and the interpolation is exact in it.
Per block of rows, each column is one vectorised pass (the clamped value's float32) and one
pass of integer index arithmetic, table reads and the row sums (with a branch, rarely
taken, for values past the outer knots or missing). A value the reference holds many times (an
atom: repeated quantile knots, such as a default 0.5) is a jump of the tails, which no
interpolation gets right: each cell keeps its atom (the heaviest, if it holds several) with
its exact tails, taken when a value equals it.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

CONTINUOUS = 0
INTEGER = 1
ONE_BITS = 0x3F800000  # float32 1.0
BLOCK = 256  # rows scored together
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@njit(cache=True, inline="always")
def log_phi_tail(z: float) -> float:  # pragma: no cover - compiled
    """``log Phi(z)`` for ``z <= -3`` (the asymptotic series; past the profile's grid)."""
    z2 = z * z
    return -0.5 * z2 - math.log(-z) - _HALF_LOG_2PI + math.log(1.0 - 1.0 / z2 + 3.0 / (z2 * z2))


def warp_bits(t: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The kernel's ``w`` of standardised distances ``t`` (the tables' coordinate)."""
    a = np.asarray(t, dtype=np.float64)
    b = np.asarray(1.0 + np.abs(a), dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(a >= 0, b - ONE_BITS, ONE_BITS - b)


def unwarp_bits(w: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The standardised distance ``t`` at integer ``w`` (exact: the float32 it stands for)."""
    wi = np.asarray(w, dtype=np.int64)
    mag = (np.abs(wi) + ONE_BITS).astype(np.int32).view(np.float32).astype(np.float64) - 1.0
    return np.asarray(np.where(wi >= 0, mag, -mag), dtype=np.float64)


@njit(cache=True, nogil=True)
def tail_score_kernel(  # pragma: no cover - compiled
    x: npt.NDArray[np.floating],  # (n, d)
    kind: npt.NDArray[np.int64],  # (d,) CONTINUOUS or INTEGER
    center: npt.NDArray[np.float64],  # (d,) continuous: t = (x - center) * inv
    inv: npt.NDArray[np.float64],
    w_lo: npt.NDArray[np.int64],  # (d,) continuous: w of the first table point
    shift: npt.NDArray[np.int64],  # (d,) continuous: log2 of a cell's width in w
    int_lo: npt.NDArray[np.float64],  # (d,) integer: the smallest value
    rows: npt.NDArray[np.int64],  # (d,) table rows used
    knot_lo: npt.NDArray[np.float64],  # (d,) the outer knots, in x
    knot_hi: npt.NDArray[np.float64],
    table: npt.NDArray[np.int16],  # (d, C, 2): per row log P(X <= v) and log P(X >= v) in
    # fixed point (4 bytes a row: the lines a batch touches are what its scoring costs)
    unit: npt.NDArray[np.float64],  # (d,) the fixed point's unit, in nats
    atom_of: npt.NDArray[np.int16],  # (d, C): the cell's atom (0: none)
    atoms: npt.NDArray[np.float64],  # (d, A, 3): atom value, its log P(X <= v), P(X >= v)
    g_lo: npt.NDArray[np.float64],  # (d,) normal score at the outer knots
    g_hi: npt.NDArray[np.float64],
    lo_scale: npt.NDArray[np.float64],  # (d,) x-units per score unit past the ends
    hi_scale: npt.NDArray[np.float64],
    floor: npt.NDArray[np.float64],  # (d,) log of the smallest probability
    right_skew: npt.NDArray[np.bool_],
    out: npt.NDArray[np.float64],  # (n,)
) -> None:
    n, d = x.shape
    a32 = np.empty(BLOCK, dtype=np.float32)
    bits = a32.view(np.int32)
    vc = np.empty(BLOCK)
    sl = np.empty(BLOCK)
    sr = np.empty(BLOCK)
    sa = np.empty(BLOCK)
    for r0 in range(0, n, BLOCK):  # blocks of rows: the temporaries stay in L1
        m = min(BLOCK, n - r0)
        sl[:] = 0.0
        sr[:] = 0.0
        sa[:] = 0.0
        for j in range(d):
            t = table[j]
            e = unit[j]
            skew = right_skew[j]
            top = rows[j] - 1
            if kind[j] == INTEGER:
                # Rows 1..top-1 hold the values lo..; rows 0 and top what lies below / above.
                lo = int_lo[j]
                hi = float(top)
                for i in range(m):
                    v = x[r0 + i, j]
                    if math.isnan(v):  # a missing value scores 0
                        continue
                    u = min(max(v - lo + 1.0, 0.0), hi)
                    lv = t[math.floor(u), 0] * e  # P(X <= v) = P(X <= floor(v))
                    rv = t[math.ceil(u), 1] * e  # P(X >= v) = P(X >= ceil(v))
                    sl[i] -= lv
                    sr[i] -= rv
                    sa[i] -= rv if skew else lv
                continue
            c, s, kl, kh = center[j], inv[j], knot_lo[j], knot_hi[j]
            for i in range(m):  # vectorised: the float32 whose bits index the table
                v = x[r0 + i, j]
                v = c if math.isnan(v) else min(max(v, kl), kh)
                vc[i] = v
                a = np.float32(1.0 + abs(v - c) * s)
                a32[i] = a if v >= c else -a  # the sign bit carries t's sign
            ta = atom_of[j]
            at = atoms[j]
            w0, sh = w_lo[j], shift[j]
            step = 1.0 / (1 << sh)
            last = top - 1
            for i in range(m):
                b = bits[i]
                w = b - ONE_BITS if b >= 0 else ONE_BITS - (b & 0x7FFFFFFF)
                q = w - w0
                k = min(max(q >> sh, 0), last)
                f = (q - (k << sh)) * step
                l0, r0_ = float(t[k, 0]), float(t[k, 1])
                lv = (l0 + (t[k + 1, 0] - l0) * f) * e
                rv = (r0_ + (t[k + 1, 1] - r0_) * f) * e
                a = ta[k]
                if a > 0 and vc[i] == at[a, 0]:  # a value the reference holds many times
                    lv = at[a, 1]
                    rv = at[a, 2]
                v = x[r0 + i, j]
                if not (v >= kl and v <= kh):  # past the outer knots (clamped above): rare
                    if math.isnan(v):
                        continue
                    if v < kl:
                        z = g_lo[j] + (v - kl) / lo_scale[j]
                        lv = max(log_phi_tail(min(z, -3.0)), floor[j])
                    else:
                        z = g_hi[j] + (v - kh) / hi_scale[j]
                        rv = max(log_phi_tail(min(-z, -3.0)), floor[j])
                sl[i] -= lv
                sr[i] -= rv
                sa[i] -= rv if skew else lv
        for i in range(m):
            out[r0 + i] = max(sl[i], sr[i], sa[i])
