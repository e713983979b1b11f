"""Numba kernels of the compiled window store (``store.py``): one call per batch, no Python
per event.

Layout of one partition's state (see ``store._Part``; the arrays below are strided views of
one buffer of rows, one row per event and one per slot, so a kernel reads them as separate
arrays while an event's fields share a cache line):

* an *arena* of events: ``T[i]`` event time, ``V[f, i]`` value of value field ``f``, and for
  the fields that sum/mean/std read, inclusive running sums in double-double (``PSh``/``PSl``;
  squares ``PQh``/``PQl``) and running counts of present values (``PC``);
* per key *slot*: a block ``[off, off + capb)`` of the arena and its live events
  ``[head, head + cnt)``, sorted by ``(event time, arrival)``, and the running sums just before
  ``head`` (``bs*``, ``bq*``, ``bc``) so that a range's sum is a difference of two prefixes.

A window over a key is then a contiguous range found by binary search: count, sum, mean,
std, last and since_last cost O(log n); min and max read whole blocks of 64 events through
their precomputed extremes (``BMx``/``BMn``) and scan only the partial blocks at the ends;
distinct_count sorts the range's values (exact, at most ``max_events_per_key``). The
running sums are double-double so that differences keep about 32 digits: a window's sum
equals the correctly rounded sum to far below the relative 1e-9 the tests allow.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

from ._prefetch import prefetch

COUNT, SUM, MEAN, MIN, MAX, STD, LAST, SINCE_LAST, DISTINCT = range(9)
CODES = {
    "count": COUNT,
    "sum": SUM,
    "mean": MEAN,
    "min": MIN,
    "max": MAX,
    "std": STD,
    "last": LAST,
    "since_last": SINCE_LAST,
    "distinct_count": DISTINCT,
}
SLIDING = 0

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
B = npt.NDArray[np.bool_]


# -- double-double arithmetic (no FMA: numba does not contract without fastmath) -------------


@njit(cache=True, nogil=True, inline="always")
def _two_sum(
    a: float,
    b: float,
) -> tuple[float, float]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@njit(cache=True, nogil=True, inline="always")
def _fast_two_sum(
    a: float,
    b: float,
) -> tuple[float, float]:
    s = a + b
    return s, b - (s - a)


@njit(cache=True, nogil=True, inline="always")
def _dd_add_d(
    ah: float,
    al: float,
    b: float,
) -> tuple[float, float]:
    s, e = _two_sum(ah, b)
    return _fast_two_sum(s, e + al)


@njit(cache=True, nogil=True, inline="always")
def _dd_sub(
    ah: float,
    al: float,
    bh: float,
    bl: float,
) -> tuple[float, float]:
    s, e = _two_sum(ah, -bh)
    t, f = _two_sum(al, -bl)
    s, e = _fast_two_sum(s, e + t)
    return _fast_two_sum(s, e + f)


@njit(cache=True, nogil=True, inline="always")
def _split(
    a: float,
) -> tuple[float, float]:
    c = 134217729.0 * a
    hi = c - (c - a)
    return hi, a - hi


@njit(cache=True, nogil=True, inline="always")
def _two_prod(
    a: float,
    b: float,
) -> tuple[float, float]:
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@njit(cache=True, nogil=True, inline="always")
def _dd_mul(
    ah: float,
    al: float,
    bh: float,
    bl: float,
) -> tuple[float, float]:
    p, e = _two_prod(ah, bh)
    return _fast_two_sum(p, e + (ah * bl + al * bh))


@njit(cache=True, nogil=True, inline="always")
def _dd_div_d(
    ah: float,
    al: float,
    b: float,
) -> tuple[float, float]:
    q1 = ah / b
    p, e = _two_prod(q1, b)
    s, f = _two_sum(ah, -p)
    f = f - e + al
    return _fast_two_sum(q1, (s + f) / b)


# -- searching -----------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _upper(
    T: I64,
    a: int,
    b: int,
    x: int,
) -> int:
    """First index in [a, b) with T > x (b if none)."""
    if a >= b:
        return a
    if T[b - 1] <= x:  # the usual case: x at or after the key's last event
        return b
    # Branch-free halving (the answer stays in [a, a + n]): a compare and a conditional
    # move per step, no mispredicted branch on the key's event times.
    n = b - a
    while n > 1:
        half = n >> 1
        a = a + half if T[a + half] <= x else a
        n -= half
    return a + 1 if T[a] <= x else a


@njit(cache=True, nogil=True, inline="always")
def _lower(
    T: I64,
    a: int,
    b: int,
    x: int,
) -> int:
    """First index in [a, b) with T >= x (b if none)."""
    if a >= b or T[a] >= x:  # a window reaching back past the key's oldest event
        return a
    n = b - a  # branch-free, as in _upper
    while n > 1:
        half = n >> 1
        a = a + half if T[a + half] < x else a
        n -= half
    return a + 1 if T[a] < x else a


@njit(cache=True, nogil=True, inline="always")
def _floor_to(
    t: int,
    step: int,
) -> int:
    r = t % step
    if r < 0:
        r += step
    return t - r


# -- block minima and maxima ----------------------------------------------------------------

BLOCK = 64  # events per block of BMx/BMn: min and max scan whole blocks of a range through them


@njit(cache=True, nogil=True, inline="always")
def _blocks(V: F64, BMx: F64, BMn: F64, lo: int, hi: int) -> None:
    """After a write to [lo, hi), ``hi`` a key's live end: the extremes of every block that
    [lo, hi) touches, over the block's positions below ``hi``. Appends then extend a
    block's extremes one value at a time, and a block wholly inside a key's live events
    holds their extremes (every position of it was written since, by that key)."""
    if hi <= lo:
        return
    for f in range(BMx.shape[0]):  # no rows where no definition takes a min or max
        for blk in range(lo // BLOCK, (hi - 1) // BLOCK + 1):
            mx = np.nan
            mn = np.nan
            for i in range(blk * BLOCK, min((blk + 1) * BLOCK, hi)):
                x = V[f, i]
                if not math.isnan(x):
                    if math.isnan(mx) or x > mx:
                        mx = x
                    if math.isnan(mn) or x < mn:
                        mn = x
            BMx[f, blk] = mx
            BMn[f, blk] = mn


@njit(cache=True, nogil=True, inline="always")
def _append_block(V: F64, BMx: F64, BMn: F64, e: int) -> None:
    """The block extremes after an append at ``e`` (the key's live end before it)."""
    blk = e // BLOCK
    for f in range(BMx.shape[0]):
        x = V[f, e]
        if e % BLOCK == 0:
            BMx[f, blk] = x
            BMn[f, blk] = x
        elif not math.isnan(x):
            if math.isnan(BMx[f, blk]) or x > BMx[f, blk]:
                BMx[f, blk] = x
            if math.isnan(BMn[f, blk]) or x < BMn[f, blk]:
                BMn[f, blk] = x


@njit(cache=True, nogil=True)
def rebuild_blocks(nslots: int, head: I64, cnt: I64, capb: I64, V: F64, BMx: F64,
                   BMn: F64) -> None:  # fmt: skip
    """Block extremes of every key (after a compaction or a restore)."""
    if BMx.shape[0] == 0:
        return
    for s in range(nslots):
        if capb[s] > 0:
            _blocks(V, BMx, BMn, head[s], head[s] + cnt[s])


@njit(cache=True, nogil=True, inline="always")
def _extreme(V: F64, BM: F64, vf: int, a: int, b: int, is_min: bool) -> float:
    """Min or max of V[vf, a:b] (NaN ignored; NaN if none): partial blocks element by
    element, whole blocks by their precomputed extreme."""
    m = np.nan
    i = a
    while i < b:
        if i % BLOCK == 0 and i + BLOCK <= b:
            x = BM[vf, i // BLOCK]
            i += BLOCK
        else:
            x = V[vf, i]
            i += 1
        if not math.isnan(x) and (math.isnan(m) or (x < m if is_min else x > m)):
            m = x
    return float(m)


# -- aggregation over one key's range ------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _moments(
    code: int,
    n: int,
    sh1: float,
    sl1: float,
    sh0: float,
    sl0: float,
    qh1: float,
    ql1: float,
    qh0: float,
    ql0: float,
) -> float:
    """sum, mean or std of a non-empty range from its running sums at its end (``*1``) and
    just before it (``*0``), in double-double; ``n`` present values (squares: std only).
    Scalars only: the hot loop of :func:`process` reads them itself (see there)."""
    sh, sl = _dd_sub(sh1, sl1, sh0, sl0)
    if code == SUM:
        return sh + sl
    if n == 0:
        return np.nan
    if code == MEAN:
        return float((sh + sl) / n)
    if n == 1:
        return 0.0
    s2h, s2l = _dd_sub(qh1, ql1, qh0, ql0)
    mh, ml = _dd_mul(sh, sl, sh, sl)
    mh, ml = _dd_div_d(mh, ml, float(n))
    dh, dl = _dd_sub(s2h, s2l, mh, ml)
    var = (dh + dl) / n
    return math.sqrt(var) if var > 0.0 else 0.0


@njit(cache=True, nogil=True)
def _aggregate(
    code: int,
    vf: int,
    pr: int,
    qr: int,
    unit: float,
    s: int,
    a: int,
    b: int,
    tq: int,
    T: I64,
    V: F64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    head: I64,
    bsh: F64,
    bsl: F64,
    bqh: F64,
    bql: F64,
    bc: I64,
    scratch: F64,
    BMx: F64,
    BMn: F64,
) -> float:
    """The value of one definition over events [a, b) of slot ``s`` for a query at ``tq``."""
    if code == COUNT:
        return float(b - a)
    if code == SINCE_LAST:
        if b > a:
            return float((tq - T[b - 1]) / unit)
        return np.nan
    if code in (SUM, MEAN, STD):
        if b == a:
            return 0.0 if code == SUM else np.nan
        first = a == head[s]
        n = PC[pr, b - 1] - (bc[pr, s] if first else PC[pr, a - 1])
        if code != STD:
            return _moments(
                code,
                n,
                PSh[pr, b - 1],
                PSl[pr, b - 1],
                bsh[pr, s] if first else PSh[pr, a - 1],
                bsl[pr, s] if first else PSl[pr, a - 1],
                0.0,
                0.0,
                0.0,
                0.0,
            )
        return _moments(code, n, PSh[pr, b - 1], PSl[pr, b - 1],
                        bsh[pr, s] if first else PSh[pr, a - 1],
                        bsl[pr, s] if first else PSl[pr, a - 1],
                        PQh[qr, b - 1], PQl[qr, b - 1],
                        bqh[qr, s] if first else PQh[qr, a - 1],
                        bql[qr, s] if first else PQl[qr, a - 1])  # fmt: skip
    if code == LAST:
        for i in range(b - 1, a - 1, -1):
            x = V[vf, i]
            if not math.isnan(x):
                return float(x)
        return np.nan
    if code == MIN:
        return _extreme(V, BMn, vf, a, b, True)
    if code == MAX:
        return _extreme(V, BMx, vf, a, b, False)
    return _distinct(V, vf, a, b, scratch)


@njit(cache=True, nogil=True)
def _distinct(V: F64, vf: int, a: int, b: int, scratch: F64) -> float:
    """distinct_count: exact over the range (at most max_events_per_key values). Apart from
    _aggregate: its sort allocates, and a function that allocates takes a reference on each
    array it is given, which made every _aggregate call cost ~0.25 us."""
    k = 0
    for i in range(a, b):
        x = V[vf, i]
        if not math.isnan(x):
            scratch[k] = x
            k += 1
    if k == 0:
        return 0.0
    srt = np.sort(scratch[:k])
    d = 1
    for i in range(1, k):
        if srt[i] != srt[i - 1]:
            d += 1
    return float(d)


# -- arena management ----------------------------------------------------------------------


@njit(cache=True, nogil=True)
def plan(
    slots: I64,
    cnt: I64,
    capb: I64,
    cap: int,
    touched: I64,
) -> tuple[I64, I64]:
    """Slots of the batch whose block cannot take their events, and the block they need
    (``touched``: a zeroed scratch of one int per slot, left zeroed)."""
    order = np.empty(len(slots), np.int64)
    k = 0
    for i in range(len(slots)):
        s = slots[i]
        if touched[s] == 0:
            order[k] = s
            k += 1
        touched[s] += 1
    grow = np.empty(k, np.int64)
    size = np.empty(k, np.int64)
    g = 0
    for i in range(k):
        s = order[i]
        need = min(cnt[s] + touched[s], cap)
        touched[s] = 0
        # at the cap a key needs its spare quarter too: without it each insert (which drops
        # the oldest event) would slide all its events back to the block's start
        if need > capb[s] or (need == cap and capb[s] < cap + max(cap // 4, 4)):
            # a quarter to spare: the live events slide back to the block's start (events
            # evicted or dropped at the front, added at the end) once per quarter of inserts
            c = 4
            while c < need + need // 4:
                c *= 2
            grow[g] = s
            size[g] = min(c, cap + max(cap // 4, 4))
            g += 1
    return grow[:g], size[:g]


@njit(cache=True, nogil=True, inline="always")
def _move(
    src: int,
    dst: int,
    n: int,
    T: I64,
    V: F64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
) -> None:
    """Copy n events from src to dst (dst <= src or non-overlapping)."""
    for i in range(n):
        T[dst + i] = T[src + i]
    for f in range(V.shape[0]):
        for i in range(n):
            V[f, dst + i] = V[f, src + i]
    for r in range(PSh.shape[0]):
        for i in range(n):
            PSh[r, dst + i] = PSh[r, src + i]
            PSl[r, dst + i] = PSl[r, src + i]
            PC[r, dst + i] = PC[r, src + i]
    for r in range(PQh.shape[0]):
        for i in range(n):
            PQh[r, dst + i] = PQh[r, src + i]
            PQl[r, dst + i] = PQl[r, src + i]


@njit(cache=True, nogil=True)
def relocate(
    grow: I64,
    size: I64,
    top: int,
    off: I64,
    capb: I64,
    head: I64,
    cnt: I64,
    T: I64,
    V: F64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    BMx: F64,
    BMn: F64,
    rows: I64,
) -> tuple[int, int]:
    """Give each slot in ``grow`` a new block of ``size`` at the arena's top; returns the new
    top and the capacity left behind. ``rows``: the arena's buffer, one row per event, that
    ``T``, ``V`` and the sums are views of (``store._Part._new_arena``)."""
    freed = 0
    w = rows.shape[1]
    for g in range(len(grow)):
        s = grow[g]
        src = head[s]
        for i in range(cnt[s]):  # whole rows: the arrays are columns of ``rows``
            for c in range(w):
                rows[top + i, c] = rows[src + i, c]
        _blocks(V, BMx, BMn, top, top + cnt[s])
        freed += capb[s]
        off[s] = top
        head[s] = top
        capb[s] = size[g]
        top += size[g]
    return top, freed


@njit(cache=True, nogil=True)
def compact_sizes(
    nslots: int,
    cnt: I64,
    capb: I64,
) -> I64:
    """Block sizes after compaction: the smallest power of two (>= 4) holding each key."""
    out = np.zeros(nslots, np.int64)
    for s in range(nslots):
        if capb[s] > 0:
            c = 4
            while c < cnt[s] + cnt[s] // 4:
                c *= 2
            out[s] = min(c, capb[s])
    return out


@njit(cache=True, nogil=True)
def compact(
    sizes: I64,
    off: I64,
    capb: I64,
    head: I64,
    cnt: I64,
    T: I64,
    V: F64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    T2: I64,
    V2: F64,
    PSh2: F64,
    PSl2: F64,
    PQh2: F64,
    PQl2: F64,
    PC2: I64,
) -> int:
    """Copy every live block into the new arena (arrays ``*2``), blocks back to back."""
    top = 0
    for s in range(len(sizes)):
        if sizes[s] == 0:
            continue
        src, n = head[s], cnt[s]
        for i in range(n):
            T2[top + i] = T[src + i]
        for f in range(V.shape[0]):
            for i in range(n):
                V2[f, top + i] = V[f, src + i]
        for r in range(PSh.shape[0]):
            for i in range(n):
                PSh2[r, top + i] = PSh[r, src + i]
                PSl2[r, top + i] = PSl[r, src + i]
                PC2[r, top + i] = PC[r, src + i]
        for r in range(PQh.shape[0]):
            for i in range(n):
                PQh2[r, top + i] = PQh[r, src + i]
                PQl2[r, top + i] = PQl[r, src + i]
        off[s] = top
        head[s] = top
        capb[s] = sizes[s]
        top += sizes[s]
    return top


@njit(cache=True, nogil=True, inline="always")
def _prefix_from(
    s: int,
    pos: int,
    end: int,
    V: F64,
    pfield: I64,
    qrow: I64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    head: I64,
    bsh: F64,
    bsl: F64,
    bqh: F64,
    bql: F64,
    bc: I64,
) -> None:
    """Recompute the running sums of slot ``s`` from index ``pos`` to ``end``."""
    for r in range(PSh.shape[0]):
        q = qrow[r]
        f = pfield[r]
        if pos > head[s]:
            h, lo, c = PSh[r, pos - 1], PSl[r, pos - 1], PC[r, pos - 1]
        else:
            h, lo, c = bsh[r, s], bsl[r, s], bc[r, s]
        if q >= 0:
            if pos > head[s]:
                qh, ql = PQh[q, pos - 1], PQl[q, pos - 1]
            else:
                qh, ql = bqh[q, s], bql[q, s]
        for i in range(pos, end):
            x = V[f, i]
            if not math.isnan(x):
                h, lo = _dd_add_d(h, lo, x)
                c += 1
                if q >= 0:
                    ph, pl = _two_prod(x, x)
                    qh, ql = _dd_add_d(qh, ql, ph)
                    qh, ql = _dd_add_d(qh, ql, pl)
            PSh[r, i] = h
            PSl[r, i] = lo
            PC[r, i] = c
            if q >= 0:
                PQh[q, i] = qh
                PQl[q, i] = ql


@njit(cache=True, nogil=True, inline="always")
def _drop_front(
    s: int,
    k: int,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    head: I64,
    cnt: I64,
    bsh: F64,
    bsl: F64,
    bqh: F64,
    bql: F64,
    bc: I64,
) -> None:
    """Forget the k oldest events of slot s (their sums move into the base)."""
    last = head[s] + k - 1
    for r in range(PSh.shape[0]):
        bsh[r, s] = PSh[r, last]
        bsl[r, s] = PSl[r, last]
        bc[r, s] = PC[r, last]
    for q in range(PQh.shape[0]):
        bqh[q, s] = PQh[q, last]
        bql[q, s] = PQl[q, last]
    head[s] += k
    cnt[s] -= k


@njit(cache=True, nogil=True, inline="always")
def _reset_base(
    s: int,
    bsh: F64,
    bsl: F64,
    bqh: F64,
    bql: F64,
    bc: I64,
) -> None:
    for r in range(bsh.shape[0]):
        bsh[r, s] = 0.0
        bsl[r, s] = 0.0
        bc[r, s] = 0
    for q in range(bqh.shape[0]):
        bqh[q, s] = 0.0
        bql[q, s] = 0.0


# -- the batch -----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def process(
    slots: I64,
    times: I64,
    vals: F64,
    codes: I64,
    vfield: I64,
    prow: I64,
    qrow_of_def: I64,
    units: F64,
    wtype: I64,
    wsize: I64,
    wstep: I64,
    pfield: I64,
    qrow: I64,
    wm: int,
    has_wm: bool,
    lateness: int,
    cap: int,
    off: I64,
    capb: I64,
    head: I64,
    cnt: I64,
    dirty: U8,
    T: I64,
    V: F64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    bsh: F64,
    bsl: F64,
    bqh: F64,
    bql: F64,
    bc: I64,
    first: I64,
    BMx: F64,
    BMn: F64,
    out: F64,
    late: B,
    dorder: I64,
    ahead: int,
) -> tuple[int, bool, int, int]:
    """Values of every event (state before it), then add it unless late. Returns the
    watermark, whether there is one, late and dropped counts.

    ``dorder``: the definitions in the order their windows are searched (each search starts
    where the previous one ended: see ``store._Layout``).
    ``ahead`` > 0: while event ``i`` is computed, the slot of event ``i + 2 ahead`` and the
    newest events of the key of event ``i + ahead`` (its slot asked for ``ahead`` events
    before) are prefetched; 0: no prefetch."""
    nd = len(codes)
    nf = vals.shape[0]
    scratch = np.empty(max(cap, 1), np.float64)
    n_late = 0
    dropped = 0
    max_size = wsize.max() if nd else 0
    n = len(slots)
    for i in range(n):
        if ahead > 0:
            if i + 2 * ahead < n:
                s2 = slots[i + 2 * ahead]
                prefetch(off, s2)  # a slot row is 72+ bytes: its first and last words
                if bc.shape[0]:
                    prefetch(bc[bc.shape[0] - 1], s2)
            if i + ahead < n:
                s1 = slots[i + ahead]
                e1 = head[s1] + cnt[s1]
                if e1 > 0:
                    prefetch(T, e1 - 1)
                    if BMx.shape[0]:
                        prefetch(BMx[0], (e1 - 1) // BLOCK)
        s = slots[i]
        t = times[i]
        h = head[s]
        e = h + cnt[s]
        b = _upper(T, h, e, t)
        last_lo = t + 1
        a = b
        # What eviction may already have removed is never seen, evicted or not: a late
        # event's values do not depend on where the batch boundaries fell.
        floor_t = wm - lateness - max_size + 1 if has_wm else times[i] - max_size - 1
        for jj in range(nd):
            j = dorder[jj]
            lo_t = t - wsize[j] + 1 if wtype[j] == SLIDING else _floor_to(t, wstep[j])
            lo_t = max(lo_t, floor_t)
            # Definitions over the same window share the search; the next start of a later
            # window lies after this one's (dorder: sliding windows largest first).
            if lo_t > last_lo:
                a = _lower(T, a, b, lo_t)
                last_lo = lo_t
            elif lo_t < last_lo:
                a = _lower(T, h, a, lo_t)
                last_lo = lo_t
            # The usual aggregations are computed here, not by a call to _aggregate: a call
            # that passes this many arrays costs more than the aggregation (see
            # benchmarks/README.md, "windows.py"); the rest go through it.
            code = codes[j]
            if code == COUNT:
                out[i, j] = float(b - a)
            elif code == SINCE_LAST:
                out[i, j] = float((t - T[b - 1]) / units[j]) if b > a else np.nan
            elif code in (SUM, MEAN, STD):
                pr = prow[j]
                if b == a:
                    out[i, j] = 0.0 if code == SUM else np.nan
                else:
                    at_head = a == h
                    sq = code == STD
                    qr = qrow_of_def[j]
                    out[i, j] = _moments(
                        code, PC[pr, b - 1] - (bc[pr, s] if at_head else PC[pr, a - 1]),
                        PSh[pr, b - 1], PSl[pr, b - 1],
                        bsh[pr, s] if at_head else PSh[pr, a - 1],
                        bsl[pr, s] if at_head else PSl[pr, a - 1],
                        PQh[qr, b - 1] if sq else 0.0, PQl[qr, b - 1] if sq else 0.0,
                        (bqh[qr, s] if at_head else PQh[qr, a - 1]) if sq else 0.0,
                        (bql[qr, s] if at_head else PQl[qr, a - 1]) if sq else 0.0,
                    )  # fmt: skip
            elif code == MAX:
                out[i, j] = _extreme(V, BMx, vfield[j], a, b, False)
            elif code == MIN:
                out[i, j] = _extreme(V, BMn, vfield[j], a, b, True)
            else:
                out[i, j] = _aggregate(code, vfield[j], prow[j], qrow_of_def[j], units[j], s,
                                       a, b, t, T, V, PSh, PSl, PQh, PQl, PC, head,
                                       bsh, bsl, bqh, bql, bc, scratch, BMx, BMn)  # fmt: skip
        if has_wm and t < wm - lateness:
            late[i] = True
            n_late += 1
            continue
        if not has_wm or t > wm:
            wm = t
            has_wm = True
        dirty[s] = 1
        at_cap = cnt[s] >= cap
        if at_cap:
            dropped += 1
            if t < T[h]:  # the new event is the key's oldest: it is the one dropped
                continue
            _drop_front(s, 1, PSh, PSl, PQh, PQl, PC, head, cnt, bsh, bsl, bqh, bql, bc)
        h = head[s]
        e = h + cnt[s]
        if e == off[s] + capb[s]:  # no room at the end: slide the live events to the start
            _move(h, off[s], cnt[s], T, V, PSh, PSl, PQh, PQl, PC)
            _blocks(V, BMx, BMn, off[s], off[s] + cnt[s])
            head[s] = off[s]
            h = off[s]
            e = h + cnt[s]
        pos = _upper(T, h, e, t)
        for k in range(e, pos, -1):  # out of order: make room (usually nothing to move)
            T[k] = T[k - 1]
            for f in range(nf):
                V[f, k] = V[f, k - 1]
        T[pos] = t
        for f in range(nf):
            x = vals[f, i]
            V[f, pos] = x if math.isfinite(x) else np.nan
        cnt[s] += 1
        _prefix_from(s, pos, e + 1, V, pfield, qrow, PSh, PSl, PQh, PQl, PC, head,
                     bsh, bsl, bqh, bql, bc)  # fmt: skip
        if pos == e:
            _append_block(V, BMx, BMn, e)
        else:
            _blocks(V, BMx, BMn, pos, e + 1)
        if pos == h or cnt[s] == 1 or at_cap:  # the oldest event changed
            first[s] = T[h]
    return wm, has_wm, n_late, dropped


@njit(cache=True, nogil=True)
def evict(
    cut: int,
    nslots: int,
    off: I64,
    capb: I64,
    head: I64,
    cnt: I64,
    dirty: U8,
    T: I64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    bsh: F64,
    bsl: F64,
    bqh: F64,
    bql: F64,
    bc: I64,
    first: I64,
) -> tuple[I64, I64, int, int]:
    """Drop events at or before ``cut``. Returns the slots left empty (evicted keys), the
    slots that never held an event (keys seen only late), the capacity freed, and the
    oldest event time left (``2**63 - 1`` if none)."""
    gone = []
    orphans = []
    freed = 0
    oldest = np.iinfo(np.int64).max
    for s in range(nslots):
        if capb[s] == 0:
            continue
        c = cnt[s]
        if c > 0:
            if first[s] > cut:  # the key's oldest event (kept per slot: no arena access)
                oldest = min(oldest, first[s])
                continue
            h = head[s]
            k = _upper(T, h, h + c, cut) - h
            _drop_front(s, k, PSh, PSl, PQh, PQl, PC, head, cnt, bsh, bsl, bqh, bql, bc)
            dirty[s] = 1
            if cnt[s] > 0:
                first[s] = T[head[s]]
                oldest = min(oldest, first[s])
                continue
            gone.append(s)
        else:
            orphans.append(s)
        freed += capb[s]
        capb[s] = 0
        head[s] = off[s]
        dirty[s] = 0
        _reset_base(s, bsh, bsl, bqh, bql, bc)
    return np.array(gone, np.int64), np.array(orphans, np.int64), freed, oldest


@njit(cache=True, nogil=True)
def close(
    fill: bool,
    before: int,
    has_before: bool,
    bound: int,
    nslots: int,
    defs: I64,
    codes: I64,
    vfield: I64,
    prow: I64,
    qrow_of_def: I64,
    units: F64,
    wsize: I64,
    wstep: I64,
    cap: int,
    head: I64,
    cnt: I64,
    capb: I64,
    T: I64,
    V: F64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    bsh: F64,
    bsl: F64,
    bqh: F64,
    bql: F64,
    bc: I64,
    BMx: F64,
    BMn: F64,
    o_def: I64,
    o_slot: I64,
    o_start: I64,
    o_value: F64,
    o_events: I64,
) -> int:
    """Tumbling/hopping windows whose end is in (before, bound]: counted (``fill`` False) or
    written to the ``o_*`` arrays; returns how many."""
    scratch = np.empty(max(cap, 1), np.float64)
    k = 0
    for jj in range(len(defs)):
        j = defs[jj]
        size = wsize[j]
        step = wstep[j]
        s_max = _floor_to(bound - size, step)
        s_min0 = _floor_to(before - size, step) + step if has_before else -(1 << 62)
        if s_min0 > s_max:
            continue
        for s in range(nslots):
            c = cnt[s]
            if capb[s] == 0 or c == 0:
                continue
            h = head[s]
            e = h + c
            # starts of windows holding an event: (T[h] - size, T[e-1]]
            st = max(s_min0, _floor_to(T[h] - size, step) + step)
            last = min(s_max, _floor_to(T[e - 1], step))
            while st <= last:
                a = _lower(T, h, e, st)
                if a == e:
                    break
                if T[a] >= st + size:  # empty window: jump to the first holding T[a]
                    st = _floor_to(T[a] - size, step) + step
                    continue
                b = _lower(T, a, e, st + size)
                if fill:
                    o_def[k] = j
                    o_slot[k] = s
                    o_start[k] = st
                    o_value[k] = _aggregate(codes[j], vfield[j], prow[j], qrow_of_def[j],
                                            units[j], s, a, b, st + size - 1, T, V, PSh, PSl,
                                            PQh, PQl, PC, head, bsh, bsl, bqh, bql, bc,
                                            scratch, BMx, BMn)  # fmt: skip
                    n = b - a
                    if vfield[j] >= 0:
                        n = 0
                        for i in range(a, b):
                            if not math.isnan(V[vfield[j], i]):
                                n += 1
                    o_events[k] = n
                k += 1
                st += step
    return k


# -- changelog -----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def serialize(
    sel: I64,
    head: I64,
    cnt: I64,
    T: I64,
    V: F64,
    words_i: I64,
    words_f: F64,
    starts: I64,
) -> None:
    """Each selected slot as ``n, T[n], V[0][n], ..`` (8-byte words) into ``words_*`` (two
    views of one buffer) from ``starts[k]``."""
    nf = V.shape[0]
    for k in range(len(sel)):
        s = sel[k]
        o = starts[k]
        n = cnt[s]
        h = head[s]
        words_i[o] = n
        o += 1
        for i in range(n):
            words_i[o + i] = T[h + i]
        o += n
        for f in range(nf):
            for i in range(n):
                words_f[o + i] = V[f, h + i]
            o += n


@njit(cache=True, nogil=True)
def restore_sizes(
    words_i: I64,
    starts: I64,
) -> I64:
    """Blocks of the smallest power of two (>= 4) holding each key, as compact as the
    changelog; a key at the cap gets its spare quarter (``plan``) when first touched."""
    out = np.empty(len(starts), np.int64)
    for k in range(len(starts)):
        n = words_i[starts[k]]
        c = 4
        while c < n:
            c *= 2
        out[k] = c
    return out


@njit(cache=True, nogil=True)
def restore_fill(
    words_i: I64,
    words_f: F64,
    starts: I64,
    sizes: I64,
    pfield: I64,
    qrow: I64,
    off: I64,
    capb: I64,
    head: I64,
    cnt: I64,
    T: I64,
    V: F64,
    PSh: F64,
    PSl: F64,
    PQh: F64,
    PQl: F64,
    PC: I64,
    bsh: F64,
    bsl: F64,
    bqh: F64,
    bql: F64,
    bc: I64,
    first: I64,
) -> int:
    """Slot k gets the k-th serialized key, blocks back to back; returns the arena's top."""
    nf = V.shape[0]
    top = 0
    for k in range(len(starts)):
        o = starts[k]
        n = words_i[o]
        o += 1
        off[k] = top
        head[k] = top
        capb[k] = sizes[k]
        cnt[k] = n
        for i in range(n):
            T[top + i] = words_i[o + i]
        o += n
        for f in range(nf):
            for i in range(n):
                V[f, top + i] = words_f[o + i]
            o += n
        _reset_base(k, bsh, bsl, bqh, bql, bc)
        _prefix_from(k, top, top + n, V, pfield, qrow, PSh, PSl, PQh, PQl, PC, head,
                     bsh, bsl, bqh, bql, bc)  # fmt: skip
        if n:
            first[k] = T[top]
        top += sizes[k]
    return top


# -- keys to slots ---------------------------------------------------------------------------
#
# An open-addressing table (linear probing, load <= 1/2) from a key's bytes to its slot, one
# row of five words per entry so that a lookup is about one cache line: the slot (-1 empty,
# -2 deleted), the key's 64-bit FNV-1a hash, its length and its first 16 bytes (zero padded,
# little-endian); the bytes after 16 are ``kb[koff[slot] + 16 : koff[slot] + length]``.

_EMPTY = -1
_DELETED = -2


@njit(cache=True, nogil=True, inline="always")
def _key_words(b: U8, a: int, n: int) -> tuple[np.uint64, np.uint64, np.uint64]:
    """FNV-1a hash of ``b[a : a + n]`` and its first 16 bytes as two words."""
    h = np.uint64(14695981039346656037)
    p = np.uint64(1099511628211)
    w0 = np.uint64(0)
    w1 = np.uint64(0)
    for i in range(n):
        x = np.uint64(b[a + i])
        h = (h ^ x) * p
        if i < 8:
            w0 |= x << np.uint64(8 * i)
        elif i < 16:
            w1 |= x << np.uint64(8 * (i - 8))
    return h, w0, w1


@njit(cache=True, nogil=True)
def key_lookup(
    q: U8,
    qstart: I64,
    qlen: I64,
    tab: npt.NDArray[np.uint64],
    kb: U8,
    koff: I64,
    out: I64,
) -> int:
    """The slot of each query key (bytes ``q[qstart[i] : qstart[i] + qlen[i]]``), -1 where
    the table has none; returns how many were not found."""
    mask = np.uint64(len(tab) - 1)
    missing = 0
    for i in range(len(qstart)):
        a = qstart[i]
        n = qlen[i]
        h, w0, w1 = _key_words(q, a, n)
        j = h & mask
        found = -1
        while True:
            s = np.int64(tab[j, 0])
            if s == _EMPTY:
                break
            if (s >= 0 and tab[j, 1] == h and tab[j, 2] == np.uint64(n) and tab[j, 3] == w0
                    and tab[j, 4] == w1):  # fmt: skip
                same = True
                o = koff[s]
                for k in range(16, n):
                    if kb[o + k] != q[a + k]:
                        same = False
                        break
                if same:
                    found = int(s)
                    break
            j = (j + np.uint64(1)) & mask
        out[i] = found
        if found < 0:
            missing += 1
    return missing


@njit(cache=True, nogil=True)
def key_insert(
    slots: I64,
    tab: npt.NDArray[np.uint64],
    kb: U8,
    koff: I64,
    klen: I64,
) -> None:
    """Enter each slot's key (already in ``kb`` at ``koff``/``klen``; not in the table)."""
    mask = np.uint64(len(tab) - 1)
    for i in range(len(slots)):
        s = slots[i]
        h, w0, w1 = _key_words(kb, koff[s], klen[s])
        j = h & mask
        while np.int64(tab[j, 0]) >= 0:
            j = (j + np.uint64(1)) & mask
        tab[j, 0] = np.uint64(s)
        tab[j, 1] = h
        tab[j, 2] = np.uint64(klen[s])
        tab[j, 3] = w0
        tab[j, 4] = w1


@njit(cache=True, nogil=True)
def key_delete(
    slots: I64,
    tab: npt.NDArray[np.uint64],
    kb: U8,
    koff: I64,
    klen: I64,
) -> None:
    """Remove each slot's entry (its key's bytes still at ``koff``/``klen``)."""
    mask = np.uint64(len(tab) - 1)
    for i in range(len(slots)):
        s = slots[i]
        h, _, _ = _key_words(kb, koff[s], klen[s])
        j = h & mask
        while np.int64(tab[j, 0]) != _EMPTY:
            if np.int64(tab[j, 0]) == s:
                tab[j, 0] = np.uint64(0xFFFFFFFFFFFFFFFE)  # -2: deleted
                break
            j = (j + np.uint64(1)) & mask
