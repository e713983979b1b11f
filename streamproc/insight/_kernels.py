"""Numba kernels of the insight package: the probing detector's per-key sequential update,
Kernel SHAP's coalition rows and DeepSHAP's multipliers."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit


@njit(cache=True, nogil=True)
def probing_kernel(  # pragma: no cover - compiled
    x: npt.NDArray[np.floating],  # (n, d) inputs
    center: npt.NDArray[np.float64],  # (d,) standardised as (x - center) * inv_scale
    inv_scale: npt.NDArray[np.float64],
    s: npt.NDArray[np.float64],  # (n,) scores
    slots: npt.NDArray[np.int64],  # (n,) key slot; -1: no key
    last: npt.NDArray[np.float32],  # (K, d) each key's previous input (updated)
    has: npt.NDArray[np.bool_],  # (K,) whether it has one (updated)
    count: npt.NDArray[np.float64],  # (K,) decayed suspicious count (updated)
    threshold: float,
    band: float,
    radius2: float,
    decay: float,
    out: npt.NDArray[np.float64],  # (n,) each row's count after it
) -> int:
    """Returns the number of suspicious rows."""
    n, d = x.shape
    suspicious = 0
    z = np.empty(d, dtype=np.float32)
    for i in range(n):
        k = slots[i]
        if k < 0:
            out[i] = 0.0
            continue
        for j in range(d):
            z[j] = (x[i, j] - center[j]) * inv_scale[j]
        susp = 0.0
        if has[k] and abs(s[i] - threshold) < band:
            d2 = 0.0
            for j in range(d):
                diff = z[j] - last[k, j]
                d2 += diff * diff
            if d2 < radius2:
                susp = 1.0
                suspicious += 1
        c = decay * count[k] + susp
        count[k] = c
        out[i] = c
        for j in range(d):
            last[k, j] = z[j]
        has[k] = True
    return suspicious


@njit(cache=True, nogil=True)
def coalition_rows(  # pragma: no cover - compiled
    x: npt.NDArray[np.float32],  # (n, d) events
    masks: npt.NDArray[np.bool_],  # (M, d)
    background: npt.NDArray[np.float32],  # (K, d)
    out: npt.NDArray[np.float32],  # (n * M * K, d)
) -> None:
    """Kernel SHAP's model inputs: per event, coalition and background row, the event's
    value where the coalition holds the feature and the background's elsewhere. Without the
    GIL, so the pipeline's thread runs meanwhile."""
    n, d = x.shape
    m = masks.shape[0]
    k = background.shape[0]
    r = 0
    for i in range(n):
        for a in range(m):
            for b in range(k):
                for j in range(d):
                    out[r, j] = x[i, j] if masks[a, j] else background[b, j]
                r += 1


LINEAR, ADD, RELU, SIGMOID, TANH, IDENTITY, SOFTMAX = range(7)  # DeepSHAP's step kinds


@njit(cache=True, nogil=True)
def deep_shap_kernel(  # pragma: no cover - compiled
    kinds: npt.NDArray[np.int64],  # (L,) step kinds
    w_off: npt.NDArray[np.int64],  # (L,) a linear step's weights at weights[w_off:]
    weights: npt.NDArray[np.float64],  # every linear step's (out, in) weights, flat
    a_off: npt.NDArray[np.int64],  # (L + 1,) step s's input columns in ax / ab from a_off[s]
    a_w: npt.NDArray[np.int64],  # (L + 1,) and its width
    ax: npt.NDArray[np.float64],  # (n, total) every step's input for the events, the output last
    ab: npt.NDArray[np.float64],  # (k, total) the same for the background rows
    x: npt.NDArray[np.float64],  # (n, d)
    bg: npt.NDArray[np.float64],  # (k, d)
    index: int,
    phi: npt.NDArray[np.float64],  # (n, d) out
) -> None:
    """DeepLIFT's rescale rule back from output ``index`` for every (event, background row)
    pair, averaged over the rows (streamproc.insight.explain.DeepShap)."""
    n, d = x.shape
    k = bg.shape[0]
    width = 0
    for s in range(a_w.shape[0]):
        width = max(width, a_w[s])
    m = np.empty(width)
    m2 = np.empty(width)
    sm = np.empty(width)
    n_steps = kinds.shape[0]
    out_w = a_w[n_steps]
    for i in range(n):
        for c in range(d):
            phi[i, c] = 0.0
        for j in range(k):
            for c in range(out_w):
                m[c] = 0.0
            m[index] = 1.0
            for s in range(n_steps - 1, -1, -1):
                kind = kinds[s]
                wi, wo = a_w[s], a_w[s + 1]
                zi, zo = a_off[s], a_off[s + 1]
                if kind == LINEAR:
                    base = w_off[s]
                    for c in range(wi):
                        m2[c] = 0.0
                    for r in range(wo):
                        mr = m[r]
                        if mr != 0.0:
                            row = base + r * wi
                            for c in range(wi):
                                m2[c] += mr * weights[row + c]
                    for c in range(wi):
                        m[c] = m2[c]
                elif kind == SOFTMAX:
                    mx = -1e300
                    for c in range(wi):
                        sm[c] = 0.5 * (ax[i, zi + c] + ab[j, zi + c])
                        mx = max(mx, sm[c])
                    tot = 0.0
                    for c in range(wi):
                        sm[c] = math.exp(sm[c] - mx)
                        tot += sm[c]
                    v = 0.0
                    for c in range(wi):
                        sm[c] /= tot
                        v += m[c] * sm[c]
                    want = 0.0
                    got = 0.0
                    for c in range(wi):
                        want += m[c] * (ax[i, zo + c] - ab[j, zo + c])
                        m2[c] = sm[c] * (m[c] - v)
                        got += m2[c] * (ax[i, zi + c] - ab[j, zi + c])
                    scale = want / got if abs(got) > 1e-12 else 1.0
                    for c in range(wi):
                        m[c] = m2[c] * scale
                elif RELU <= kind <= TANH:  # elementwise (ADD and IDENTITY pass m on)
                    for c in range(wi):
                        dz = ax[i, zi + c] - ab[j, zi + c]
                        if abs(dz) >= 1e-9:
                            m[c] *= (ax[i, zo + c] - ab[j, zo + c]) / dz
                        else:  # the derivative where the two inputs meet
                            z = 0.5 * (ax[i, zi + c] + ab[j, zi + c])
                            if kind == RELU:
                                m[c] *= 1.0 if z > 0.0 else 0.0
                            elif kind == SIGMOID:
                                e = 1.0 / (1.0 + math.exp(-z))
                                m[c] *= e * (1.0 - e)
                            else:  # TANH
                                t = math.tanh(z)
                                m[c] *= 1.0 - t * t
            for c in range(d):
                phi[i, c] += m[c] * (x[i, c] - bg[j, c])
        for c in range(d):
            phi[i, c] /= k
