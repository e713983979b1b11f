"""Numba kernel of the probing detector: the per-key sequential update in one pass."""

from __future__ import annotations

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
