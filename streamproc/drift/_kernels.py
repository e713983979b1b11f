"""Numba kernels: normal-score transform with prewhitening, and multi-arm CUSUMs with
hysteresis. One call handles a whole micro-batch; no per-event Python."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

MEAN_UP = 0
MEAN_DOWN = 1
VARIANCE_UP = 2
BERNOULLI = 3  # e is 0/1; param is (up units) and param2 (down units)

FIRING = 1
RESOLVED = 0

# Columns of the integer transition buffer.
T_FEATURE, T_ROW, T_STATE, T_ARM, T_WINDOW, T_FIRST, T_LAST = range(7)


@njit(cache=True, inline="always")
def _first_at_least(  # pragma: no cover - compiled
    table: npt.NDArray[np.float64], j: int, v: float, a: int, b: int
) -> int:
    """The first index in ``[a, b)`` of the sorted row ``table[j]`` holding a value >= v
    (``b`` if none does). Halving: the loop runs ceil(log2(b - a)) times whatever the
    data, so its own exit branch is predictable."""
    n = b - a
    if n <= 0:
        return a
    base = a
    while n > 1:
        half = n >> 1
        base = base + half if table[j, base + half - 1] < v else base
        n -= half
    return base + 1 if table[j, base] < v else base


@njit(cache=True, nogil=True)
def normal_scores_kernel(  # pragma: no cover - compiled
    x: npt.NDArray[np.floating],
    knots: npt.NDArray[np.float64],
    grid: npt.NDArray[np.float64],
    lo_scale: npt.NDArray[np.float64],
    hi_scale: npt.NDArray[np.float64],
    bucket_start: npt.NDArray[np.int64],
    bucket_scale: npt.NDArray[np.float64],
    z_mean: npt.NDArray[np.float64],
    z_std: npt.NDArray[np.float64],
    phi: npt.NDArray[np.float64],
    prev: npt.NDArray[np.float64],
    has_prev: npt.NDArray[np.bool_],
    tail_span: float,
    out: npt.NDArray[np.float64],
) -> None:
    """``out[i, j]``: prewhitened standardised normal score of ``x[i, j]`` (NaN if missing).

    ``bucket_start[j, c]`` is the first knot at or above ``q0 + c / bucket_scale[j]``, so
    the knot search for a value runs over the few knots of its cell, not all of them.

    Inside the reference range the score is the piecewise-linear interpolation of the
    quantile knots (mid-score for values equal to tied knots); beyond it a saturating
    exponential adds at most ``tail_span``. ``prev``/``has_prev`` carry the last score of
    each column across batches for the AR(1) prewhitening ``(z - phi z') / sqrt(1 - phi^2)``.

    Column by column: the column's constants and its prewhitening state are read once per
    column into locals, not once per value (0.075 against 0.200 us per event on a 4096 x 7
    batch, together with the 4096-cell index: see ``INDEX_CELLS``).
    """
    n, d = x.shape
    kn = grid.size
    nb = bucket_start.shape[1] - 1
    for j in range(d):
        q0 = knots[j, 0]
        qk = knots[j, kn - 1]
        lo_s = lo_scale[j]
        hi_s = hi_scale[j]
        cells = bucket_scale[j]
        mean = z_mean[j]
        std = z_std[j]
        p = phi[j]
        root = math.sqrt(1.0 - p * p)
        last = prev[j]
        has = has_prev[j]
        for i in range(n):
            v = float(x[i, j])
            if not math.isfinite(v):
                out[i, j] = np.nan
                continue
            if v < q0:
                ex = (q0 - v) / lo_s if lo_s > 0 else np.inf
                u = grid[0] - tail_span * (1.0 - math.exp(-ex / tail_span))
            elif v > qk:
                ex = (v - qk) / hi_s if hi_s > 0 else np.inf
                u = grid[kn - 1] + tail_span * (1.0 - math.exp(-ex / tail_span))
            else:
                # lo: first knot >= v, searched between the knots that bound v's cell
                # of the column's uniform index; hi: first knot > v
                bi = min(int((v - q0) * cells), nb - 1)
                a = _first_at_least(knots, j, v, bucket_start[j, bi], bucket_start[j, bi + 1])
                if a >= kn or knots[j, a] < v or (a > 0 and knots[j, a - 1] >= v):
                    a = _first_at_least(knots, j, v, 0, kn)  # a cell edge rounded the other way
                lo = a
                if knots[j, lo] == v:  # ties only: the knots equal to v end at hi
                    b = kn
                    while a < b:
                        m = (a + b) >> 1
                        if knots[j, m] <= v:
                            a = m + 1
                        else:
                            b = m
                hi = a
                if hi > lo:  # v equals knots[lo:hi]
                    u = 0.5 * (grid[lo] + grid[hi - 1])
                else:  # knots[lo - 1] < v < knots[lo]
                    ql = knots[j, lo - 1]
                    qh = knots[j, lo]
                    u = grid[lo - 1] + (grid[lo] - grid[lo - 1]) * (v - ql) / (qh - ql)
            z = (u - mean) / std
            if p != 0.0 and has:
                out[i, j] = (z - p * last) / root
            else:
                out[i, j] = z
            last = z
            has = True
        prev[j] = last
        has_prev[j] = has


@njit(cache=True, inline="always")
def _transition(  # pragma: no cover - compiled
    out_i: npt.NDArray[np.int64],
    out_f: npt.NDArray[np.float64],
    nt: int,
    feature: int,
    row: int,
    state: int,
    arm: int,
    window: int,
    first: int,
    last: int,
    value: float,
    threshold: float,
) -> int:
    """Write transition ``nt`` (the columns T_FEATURE ... T_LAST, then statistic and
    threshold) if the buffers hold it; returns the new count."""
    if nt >= out_i.shape[0]:
        return nt
    out_i[nt, 0] = feature
    out_i[nt, 1] = row
    out_i[nt, 2] = state
    out_i[nt, 3] = arm
    out_i[nt, 4] = window
    out_i[nt, 5] = first
    out_i[nt, 6] = last
    out_f[nt, 0] = value
    out_f[nt, 1] = threshold
    return nt + 1


@njit(cache=True, nogil=True)
def cusum_kernel(  # pragma: no cover - compiled
    e: npt.NDArray[np.float64],
    kind: npt.NDArray[np.int64],
    param: npt.NDArray[np.float64],
    param2: npt.NDArray[np.float64],
    h: npt.NDArray[np.float64],
    s_arm: npt.NDArray[np.float64],
    start_t: npt.NDArray[np.int64],
    start_pos: npt.NDArray[np.int64],
    firing: npt.NDArray[np.bool_],
    last_trig_t: npt.NDArray[np.int64],
    fire_t: npt.NDArray[np.int64],
    fire_pos: npt.NDArray[np.int64],
    last_trig_pos: npt.NDArray[np.int64],
    fire_arm: npt.NDArray[np.int64],
    t0: int,
    pos: npt.NDArray[np.int64],
    recovery: int,
    det_first: npt.NDArray[np.int64],
    det_count: npt.NDArray[np.int64],
    out_i: npt.NDArray[np.int64],
    out_f: npt.NDArray[np.float64],
) -> int:
    """Run ``A`` one-sided CUSUM arms over every column of ``e`` (shape ``(n, d)``).

    Arm ``a`` of column ``j`` adds ``e - param`` (mean up), ``-e - param`` (mean down),
    ``e*e - param`` (variance up) or ``param`` / ``-param2`` for a 1 / 0 (Bernoulli); it
    triggers when it exceeds ``h[a, j]`` and restarts at 0. Hysteresis per column: the
    first trigger fires (FIRING); the column resolves (RESOLVED) once ``recovery`` rows pass
    without a trigger. Transitions are written to ``out_i`` / ``out_f``; returns how many.
    """
    n, d = e.shape
    n_arms = kind.size
    nt = 0
    for i in range(n):
        t = t0 + i
        for j in range(d):
            if firing[j] and t - last_trig_t[j] >= recovery:
                firing[j] = False
                a = fire_arm[j]
                nt = _transition(out_i, out_f, nt, j, i, RESOLVED, a, t - fire_t[j], fire_pos[j],
                                 last_trig_pos[j], s_arm[a, j], h[a, j])  # fmt: skip
            v = e[i, j]
            if not math.isfinite(v):
                continue
            hit = False
            for a in range(n_arms):
                s = s_arm[a, j]
                if s == 0.0:
                    start_t[a, j] = t
                    start_pos[a, j] = pos[i]
                k = kind[a]
                if k == MEAN_UP:
                    s += v - param[a, j]
                elif k == MEAN_DOWN:
                    s += -v - param[a, j]
                elif k == VARIANCE_UP:
                    s += v * v - param[a, j]
                elif v > 0.5:
                    s += param[a, j]
                else:
                    s -= param2[a, j]
                s = max(0.0, s)
                if s > h[a, j]:
                    if not hit:
                        hit = True
                        det_count[j] += 1
                        if det_first[j] < 0:
                            det_first[j] = i
                    if not firing[j]:
                        firing[j] = True
                        fire_t[j] = start_t[a, j]
                        fire_pos[j] = start_pos[a, j]
                        fire_arm[j] = a
                        nt = _transition(out_i, out_f, nt, j, i, FIRING, a,
                                         t - start_t[a, j] + 1, start_pos[a, j], pos[i], s,
                                         h[a, j])  # fmt: skip
                    last_trig_t[j] = t
                    last_trig_pos[j] = pos[i]
                    s = 0.0
                s_arm[a, j] = s
    return nt


@njit(cache=True, nogil=True)
def cusum_mean_var_kernel(  # pragma: no cover - compiled
    e: npt.NDArray[np.float64],
    kind: npt.NDArray[np.int64],
    param: npt.NDArray[np.float64],
    param2: npt.NDArray[np.float64],
    h: npt.NDArray[np.float64],
    s_arm: npt.NDArray[np.float64],
    start_t: npt.NDArray[np.int64],
    start_pos: npt.NDArray[np.int64],
    firing: npt.NDArray[np.bool_],
    last_trig_t: npt.NDArray[np.int64],
    fire_t: npt.NDArray[np.int64],
    fire_pos: npt.NDArray[np.int64],
    last_trig_pos: npt.NDArray[np.int64],
    fire_arm: npt.NDArray[np.int64],
    t0: int,
    pos: npt.NDArray[np.int64],
    recovery: int,
    det_first: npt.NDArray[np.int64],
    det_count: npt.NDArray[np.int64],
    out_i: npt.NDArray[np.int64],
    out_f: npt.NDArray[np.float64],
) -> int:
    """:func:`cusum_kernel` for the arms ``kind == (MEAN_UP, MEAN_DOWN, VARIANCE_UP)``.

    Column by column, each column's three sums and their start marks held in locals for
    the whole batch; the arms are taken in order only on a row where one crosses its
    threshold. Columns are independent, so every column ends in the state the generic
    kernel leaves; only the transitions come out column by column (the caller sorts them
    by row). 0.029 against 0.129 us per event on a 4096 x 7 batch.
    """
    n, d = e.shape
    nt = 0
    for j in range(d):
        s0, s1, s2 = s_arm[0, j], s_arm[1, j], s_arm[2, j]
        t0a, t1a, t2a = start_t[0, j], start_t[1, j], start_t[2, j]
        p0a, p1a, p2a = start_pos[0, j], start_pos[1, j], start_pos[2, j]
        k0, k1, k2 = param[0, j], param[1, j], param[2, j]
        h0, h1, h2 = h[0, j], h[1, j], h[2, j]
        fir, ltt, ltp = firing[j], last_trig_t[j], last_trig_pos[j]
        ft, fp, fa = fire_t[j], fire_pos[j], fire_arm[j]
        dfirst, dcount = det_first[j], det_count[j]
        for i in range(n):
            t = t0 + i
            if fir and t - ltt >= recovery:
                fir = False
                nt = _transition(out_i, out_f, nt, j, i, RESOLVED, fa, t - ft, fp, ltp,
                                 s0 if fa == 0 else (s1 if fa == 1 else s2),
                                 h0 if fa == 0 else (h1 if fa == 1 else h2))  # fmt: skip
            v = e[i, j]
            if not math.isfinite(v):
                continue
            p = pos[i]
            if s0 == 0.0:
                t0a, p0a = t, p
            if s1 == 0.0:
                t1a, p1a = t, p
            if s2 == 0.0:
                t2a, p2a = t, p
            s0 = max(0.0, s0 + (v - k0))
            s1 = max(0.0, s1 + (-v - k1))
            s2 = max(0.0, s2 + (v * v - k2))
            if s0 > h0 or s1 > h1 or s2 > h2:  # rare: the arms in order, as cusum_kernel
                dcount += 1
                if dfirst < 0:
                    dfirst = i
                for a in range(3):
                    s = s0 if a == 0 else (s1 if a == 1 else s2)
                    ha = h0 if a == 0 else (h1 if a == 1 else h2)
                    if s <= ha:
                        continue
                    if not fir:
                        fir = True
                        ft = t0a if a == 0 else (t1a if a == 1 else t2a)
                        fp = p0a if a == 0 else (p1a if a == 1 else p2a)
                        fa = a
                        nt = _transition(out_i, out_f, nt, j, i, FIRING, a, t - ft + 1, fp, p,
                                         s, ha)  # fmt: skip
                    ltt, ltp = t, p
                    if a == 0:
                        s0 = 0.0
                    elif a == 1:
                        s1 = 0.0
                    else:
                        s2 = 0.0
        s_arm[0, j], s_arm[1, j], s_arm[2, j] = s0, s1, s2
        start_t[0, j], start_t[1, j], start_t[2, j] = t0a, t1a, t2a
        start_pos[0, j], start_pos[1, j], start_pos[2, j] = p0a, p1a, p2a
        firing[j], last_trig_t[j], last_trig_pos[j] = fir, ltt, ltp
        fire_t[j], fire_pos[j], fire_arm[j] = ft, fp, fa
        det_first[j], det_count[j] = dfirst, dcount
    return nt


@njit(cache=True, nogil=True)
def category_counts_kernel(  # pragma: no cover - compiled
    seg: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    n_values: npt.NDArray[np.int64],
    bin_of: npt.NDArray[np.int64],
    other: npt.NDArray[np.int64],
    counts: npt.NDArray[np.float64],
    direct: npt.NDArray[np.int64],
    direct_len: npt.NDArray[np.int64],
) -> None:
    """Add each finite ``seg[i, j]`` to ``counts[j, bin]``: the bin of the nearest of the
    column's sorted category ``values[j, :n_values[j]]`` when within a relative 1e-6, else
    the column's "other" bin. NaN and infinities count nowhere.

    A whole number ``v`` in ``[0, direct_len[j])`` takes its bin from ``direct[j, v]``
    without a search (counts, flags, hours: every category of such a column is a whole
    number below ``direct_len[j]``, and a whole number is within 1e-6 of no other whole
    number); any other value is searched."""
    n, d = seg.shape
    for i in range(n):
        for j in range(d):
            v = seg[i, j]
            if not math.isfinite(v):
                continue
            if 0.0 <= v < direct_len[j] and math.floor(v) == v:
                counts[j, direct[j, int(v)]] += 1.0
                continue
            m = n_values[j]
            k = _first_at_least(values, j, v, 0, m)
            if k >= m or (k > 0 and abs(v - values[j, k - 1]) <= abs(values[j, k] - v)):
                k -= 1
            c = values[j, k]
            if abs(v - c) <= 1e-6 * max(1.0, abs(c)):
                counts[j, bin_of[j, k]] += 1.0
            else:
                counts[j, other[j]] += 1.0
