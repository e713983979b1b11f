"""Probing detection: keys that send many near-duplicate inputs near the decision threshold.

An evasion or model-extraction attempt walks an input towards the decision boundary in
small steps, from one key (an account, a device, an API tenant): its requests score within a
band of the threshold and each is close to the key's previous one. Normal traffic rarely
does either, and almost never both, many times in a row.

Only requests that score within ``band`` of the threshold can be suspicious, so only they
are looked at: per batch a vectorised filter keeps the rows in the band (about 1% of normal
traffic for the demo model) and everything per key happens for those rows alone. Per key
the detector keeps its last in-band input (standardised by the reference's robust scale)
and a decayed count of *suspicious* in-band requests: ``c <- decay * c + [suspicious]``
over the key's in-band requests, with ``decay = 1 - 1 / horizon``. An in-band request is
suspicious when its RMS distance to the key's previous in-band input is below ``radius``
(robust sigma). A key whose count reaches ``min_suspicious`` raises a ``probing`` alert
(once, until its count falls below half of that: then a RESOLVED one). A client that
probes on every request is alerted within ``min_suspicious`` + 1 requests or so (the
first request has no predecessor; see :func:`requests_to_alert`); requests out of the band
in between neither reset nor decay its count, so interleaving them does not hide a probe.

Memory is bounded: at most ``max_keys`` keys are tracked (keys seen in the band), each
``4 * d + 18`` bytes of arrays (d input columns) plus one dict entry; when full, the least
recently seen tenth is evicted (an evicted key starts afresh). The work per batch: one
vectorised band test over the scores, then, for the rows in the band only, one dict
lookup each and one compiled pass
(:func:`~streamproc.insight._kernels.probing_kernel`).

>>> import numpy as np
>>> det = ProbingDetector(np.zeros(2), np.ones(2), threshold=0.5, min_suspicious=5)
>>> x = np.zeros((1, 2)); s = np.array([0.49])
>>> alerts = [a for _ in range(10) for a in det.update([b"acct-1"], x, s)]
>>> len(alerts), alerts[0].feature, det.keys_tracked
(1, 'key=acct-1', 1)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from streamproc.insight._kernels import probing_kernel
from streamproc.types import Alert, AlertState, AlertType, Severity


def requests_to_alert(min_suspicious: float, horizon: float) -> int:
    """Requests a client that probes on every request makes until it is alerted.

    >>> requests_to_alert(10, 100)
    12
    """
    decay = 1.0 - 1.0 / horizon
    c, n = 0.0, 1  # the first request has no previous input to be close to
    while c < min_suspicious - 1e-9:
        c = decay * c + 1.0
        n += 1
        if n > 1_000_000:
            raise ValueError("min_suspicious is out of reach at this horizon")
    return n


class ProbingDetector:
    """Tracks keys' requests; :meth:`update` returns the probing alerts a batch raised."""

    def __init__(
        self,
        center: npt.ArrayLike,
        scale: npt.ArrayLike,
        *,
        threshold: float,
        band: float = 0.1,
        radius: float = 0.25,
        horizon: float = 100.0,
        min_suspicious: float = 10.0,
        max_keys: int = 100_000,
        show_key: Callable[[bytes], str] | None = None,
    ) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        s = np.asarray(scale, dtype=np.float64)
        self.inv_scale = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 1.0).astype(np.float32)
        self.inv_scale64 = self.inv_scale.astype(np.float64)
        self.threshold = float(threshold)
        self.band = float(band)
        self.radius2 = float(radius) ** 2 * self.center.size  # squared RMS -> squared sum
        self.decay = 1.0 - 1.0 / float(horizon)
        self.min_suspicious = float(min_suspicious)
        self.max_keys = int(max_keys)
        self.show_key = show_key or (lambda k: k.decode("utf-8", "replace"))
        d = self.center.size
        self._slot: dict[bytes | None, int] = {}  # None (no key) is never inserted
        self._keys: list[bytes | None] = [None] * self.max_keys
        self._free = list(range(self.max_keys - 1, -1, -1))
        self._last = np.zeros((self.max_keys, d), dtype=np.float32)
        self._has = np.zeros(self.max_keys, dtype=np.bool_)
        self._count = np.zeros(self.max_keys, dtype=np.float64)
        self._seen = np.zeros(self.max_keys, dtype=np.int64)  # request number, for LRU
        self._alerted = np.zeros(self.max_keys, dtype=np.bool_)
        self._t = 0
        self.evicted = 0
        self.suspicious = 0

    @property
    def keys_tracked(self) -> int:
        return len(self._slot)

    @property
    def memory_bytes(self) -> int:
        """The arrays' bytes (the key dict comes on top: about 100 bytes per key)."""
        return int(self._last.nbytes + self._has.nbytes + self._count.nbytes
                   + self._seen.nbytes + self._alerted.nbytes)  # fmt: skip

    def _slots(
        self, keys: Sequence[bytes | None], seen: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Each key's slot (-1: no key), new keys given one; one C-level pass over the keys,
        a Python step only for keys not seen before. ``seen``: each request's number (LRU)."""
        n = len(keys)
        out = np.fromiter(map(self._slot.get, keys, itertools.repeat(-1)), np.int64, count=n)
        found = np.flatnonzero(out >= 0)
        # Seen now, before any eviction below: this batch's keys are the most recent ones
        # (max_keys must exceed the distinct keys of a batch several times).
        self._seen[out[found]] = seen[found]
        for i in np.flatnonzero(out < 0).tolist():
            k = keys[i]
            if k is None:
                continue  # no key: nothing to attribute it to
            s = self._slot.get(k)  # the same new key twice in one batch
            if s is None:
                if not self._free:
                    self._evict()
                s = self._free.pop()
                self._slot[k] = s
                self._keys[s] = k
                self._has[s] = False
                self._count[s] = 0.0
                self._alerted[s] = False
            out[i] = s
            self._seen[s] = seen[i]
        return out

    def _evict(self) -> None:
        """Free the least recently seen tenth of the slots."""
        n = max(1, self.max_keys // 10)
        used = np.fromiter(self._slot.values(), dtype=np.int64, count=len(self._slot))
        old = used[np.argpartition(self._seen[used], n - 1)[:n]]
        for s in old.tolist():
            k = self._keys[s]
            if k is not None:
                del self._slot[k]
            self._keys[s] = None
            self._free.append(s)
        self.evicted += n

    def update(
        self,
        keys: Sequence[bytes | None],
        x: npt.ArrayLike,
        scores: npt.ArrayLike,
        offsets: npt.NDArray[np.int64] | None = None,
    ) -> list[Alert]:
        """Feed one batch: per row its record key, input row and model score."""
        n = len(keys)
        if n == 0:
            return []
        s = np.asarray(scores).reshape(-1)
        # Only the rows within the band can be suspicious: the rest never touch per-key state.
        band = np.flatnonzero(np.abs(s - self.threshold) < self.band)
        self._t += n
        if not len(band):
            return []
        a = np.asarray(x)
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        a = np.ascontiguousarray(a.reshape(n, -1)[band])
        sb = np.ascontiguousarray(s[band], dtype=np.float64)
        slots = self._slots([keys[i] for i in band.tolist()], self._t - n + band)
        valid = np.flatnonzero(slots >= 0)
        if not len(valid):
            return []
        c = np.empty(len(band))
        self.suspicious += probing_kernel(a, self.center, self.inv_scale64, sb, slots,
                                          self._last, self._has, self._count,
                                          self.threshold, self.band, self.radius2,
                                          self.decay, c)  # fmt: skip
        return self._alerts(band[valid], slots[valid], c[valid], offsets)

    def _alerts(
        self,
        order: npt.NDArray[np.intp],
        g: npt.NDArray[np.int64],
        c: npt.NDArray[np.float64],
        offsets: npt.NDArray[np.int64] | None,
    ) -> list[Alert]:
        hot = c >= self.min_suspicious
        was = self._alerted[g]
        if not (hot.any() or was.any()):
            return []
        # Keys that are or become alerted; their rows in arrival order per key.
        live = np.zeros(self.max_keys, dtype=np.bool_)
        live[g[hot | was]] = True
        cold = c < 0.5 * self.min_suspicious
        found: list[tuple[int, Alert]] = []
        for i in np.flatnonzero(live[g] & (hot | cold)).tolist():
            s = int(g[i])
            fire = bool(hot[i])
            if fire == bool(self._alerted[s]):
                continue
            self._alerted[s] = fire
            key = self._keys[s]
            shown = self.show_key(key) if key is not None else "?"
            off = int(offsets[order[i]]) if offsets is not None else None
            if fire:
                msg = (f"key {shown}: {c[i]:.1f} recent requests (decayed count) scored within "
                       f"{self.band} of the threshold {self.threshold} with inputs within "
                       f"{math.sqrt(self.radius2 / self.center.size):.2f} robust sigma of the "
                       "key's previous input: probing the decision boundary?")  # fmt: skip
                state = AlertState.FIRING
            else:
                msg = f"key {shown}: no longer probing"
                state = AlertState.RESOLVED
            found.append((int(order[i]), Alert(
                AlertType.PROBING, state, Severity.WARNING, f"key={shown}", "probing_count",
                float(c[i]), self.min_suspicious, 0, off, off, msg,
            )))  # fmt: skip
        found.sort(key=lambda t: t[0])  # in arrival order
        return [a for _, a in found]
