"""The detector interface shared by every drift detector, the hysteresis rule, and
``NullDetector``.

A detector takes a BATCH per ``update``: shape ``(n,)`` for a univariate detector or
``(n, d)`` for ``d`` features. After the call:

* ``drift_detected``: raw detections in this batch, river-style (bool, or a bool per
  feature);
* ``detection_rows``: per feature, the row of the first raw detection in the batch (-1);
* ``detection_counts``: per feature, how many raw detections the batch held;
* ``statistic`` / ``threshold``: the current test statistic and its alarm level;
* ``in_drift``: per feature, whether an alert is FIRING;
* ``transitions``: the alert state changes of this batch (hysteresis applied).

Hysteresis (one rule for all detectors): the first detection fires an alert; it resolves
once ``recovery`` events pass without another detection. A persistent drift keeps
re-detecting, so it stays FIRING: one FIRING and one RESOLVED per drift, never a stream of
repeats.

>>> import numpy as np
>>> det = NullDetector(n_features=3)
>>> det.update(np.zeros((10, 3)))
>>> det.drift_detected.tolist(), det.transitions
([False, False, False], [])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streamproc.drift.alerts import AlertState

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert state change of one feature of a detector."""

    feature: int  # column index
    row: int  # row in the batch where it happened
    state: AlertState
    statistic: str  # e.g. "cusum_mean_up"
    value: float
    threshold: float
    window_events: int  # events the evidence spans (FIRING) / the alert lasted (RESOLVED)
    first_offset: int | None
    last_offset: int | None
    estimate: float = float("nan")  # estimated shift (sigma) or variance ratio, when known


@runtime_checkable
class Detector(Protocol):
    name: str
    n_features: int
    univariate: bool

    def update(self, x: npt.ArrayLike, offsets: npt.ArrayLike | None = None) -> None: ...

    @property
    def drift_detected(self) -> bool | BoolArray: ...

    @property
    def detection_rows(self) -> IntArray: ...

    @property
    def detection_counts(self) -> IntArray: ...

    @property
    def statistic(self) -> float | FloatArray: ...

    @property
    def threshold(self) -> float | FloatArray: ...

    @property
    def in_drift(self) -> BoolArray: ...

    @property
    def transitions(self) -> list[Transition]: ...


def as_batch(x: npt.ArrayLike, n_features: int, univariate: bool) -> FloatArray:
    """Validate a batch and return it as a C-contiguous ``(n, d)`` float64 array."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1 and (univariate or n_features == 1):
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != n_features:
        raise ValueError(f"expected a batch of shape (n, {n_features}), got {a.shape}")
    return np.ascontiguousarray(a)


def offsets_for(offsets: npt.ArrayLike | None, t0: int, n: int) -> IntArray:
    """Event offsets of a batch: the caller's, else positions counted by the detector."""
    if offsets is None:
        return np.arange(t0, t0 + n, dtype=np.int64)
    o = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if o.size != n:
        raise ValueError(f"got {o.size} offsets for {n} events")
    return o


class BatchOutputs:
    """Per-batch outputs every detector exposes (held by composition)."""

    def __init__(self, n_features: int, univariate: bool) -> None:
        self.n_features = n_features
        self.univariate = univariate
        self.detected = np.zeros(n_features, dtype=np.bool_)
        self.rows = np.full(n_features, -1, dtype=np.int64)
        self.counts = np.zeros(n_features, dtype=np.int64)
        self.stat = np.zeros(n_features)
        self.thr = np.full(n_features, np.inf)
        self.transitions: list[Transition] = []

    def scalar_or_array(self, a: npt.NDArray[np.generic]) -> float | bool | npt.NDArray[np.generic]:
        if self.univariate:
            return a[0].item()  # type: ignore[no-any-return]
        return a


class Hysteresis:
    """The recovery rule in Python, for detectors that produce raw triggers per row."""

    def __init__(self, n_features: int, recovery: int) -> None:
        self.recovery = recovery
        self.firing = np.zeros(n_features, dtype=np.bool_)
        self.last_t = np.zeros(n_features, dtype=np.int64)
        self.fire_t = np.zeros(n_features, dtype=np.int64)
        self.fire_off = np.zeros(n_features, dtype=np.int64)
        self.last_off = np.zeros(n_features, dtype=np.int64)
        self.fire_value = np.zeros(n_features)
        self.fire_thr = np.zeros(n_features)

    def process(
        self,
        t0: int,
        n: int,
        triggers: Sequence[tuple[int, int, float, float, int, int]],
        offsets: IntArray,
        statistic: str,
    ) -> list[Transition]:
        """Apply the rule to one batch.

        ``triggers``: ``(feature, row, value, threshold, window_events, first_offset)`` in
        row order, ``first_offset`` being the offset of the first event of the evidence.
        """
        out: list[Transition] = []
        by_feature: dict[int, list[tuple[int, float, float, int, int]]] = {}
        for j, i, v, thr, w, first in triggers:
            by_feature.setdefault(j, []).append((i, v, thr, w, first))
        active = set(by_feature) | {int(j) for j in np.flatnonzero(self.firing)}
        for j in sorted(active):
            for i, v, thr, w, first in by_feature.get(j, []):
                t = t0 + i
                self._maybe_resolve(j, t, t0, offsets, statistic, out)
                if not self.firing[j]:
                    self.firing[j] = True
                    self.fire_t[j] = t - w + 1
                    self.fire_off[j] = first
                    self.fire_value[j], self.fire_thr[j] = v, thr
                    out.append(
                        Transition(
                            j,
                            i,
                            AlertState.FIRING,
                            statistic,
                            v,
                            thr,
                            w,
                            int(self.fire_off[j]),
                            int(offsets[i]),
                        )
                    )
                self.last_t[j] = t
                self.last_off[j] = int(offsets[i])
            self._maybe_resolve(j, t0 + n - 1, t0, offsets, statistic, out)
        out.sort(key=lambda tr: tr.row)
        return out

    def _maybe_resolve(
        self, j: int, t: int, t0: int, offsets: IntArray, statistic: str, out: list[Transition]
    ) -> None:
        if self.firing[j] and t - self.last_t[j] >= self.recovery:
            t_res = int(self.last_t[j] + self.recovery)
            row = max(t_res - t0, 0)
            self.firing[j] = False
            out.append(
                Transition(
                    j,
                    row,
                    AlertState.RESOLVED,
                    statistic,
                    float(self.fire_value[j]),
                    float(self.fire_thr[j]),
                    t_res - int(self.fire_t[j]),
                    int(self.fire_off[j]),
                    int(self.last_off[j]),
                )
            )


class ExposesOutputs:
    """Mixin: the read-only properties of :class:`Detector`, served from ``self._out``."""

    _out: BatchOutputs
    _firing: BoolArray

    @property
    def drift_detected(self) -> bool | BoolArray:
        return self._out.scalar_or_array(self._out.detected)  # type: ignore[return-value]

    @property
    def detection_rows(self) -> IntArray:
        return self._out.rows

    @property
    def detection_counts(self) -> IntArray:
        return self._out.counts

    @property
    def statistic(self) -> float | FloatArray:
        return self._out.scalar_or_array(self._out.stat)  # type: ignore[return-value]

    @property
    def threshold(self) -> float | FloatArray:
        return self._out.scalar_or_array(self._out.thr)  # type: ignore[return-value]

    @property
    def in_drift(self) -> BoolArray:
        return self._firing.copy()

    @property
    def transitions(self) -> list[Transition]:
        return self._out.transitions


class NullDetector(ExposesOutputs):
    """A detector that never detects: switches a monitor off."""

    name = "null"

    def __init__(self, n_features: int | None = None) -> None:
        self.univariate = n_features is None
        self.n_features = 1 if n_features is None else n_features
        self._out = BatchOutputs(self.n_features, self.univariate)
        self._firing = np.zeros(self.n_features, dtype=np.bool_)

    def update(self, x: npt.ArrayLike, offsets: npt.ArrayLike | None = None) -> None:
        as_batch(x, self.n_features, self.univariate)
