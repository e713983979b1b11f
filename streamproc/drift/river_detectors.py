"""river's drift detectors behind the batch interface: one river detector per feature,
fed the batch element by element (river is a per-event library), with the same hysteresis
as the native detectors.

Continuous: ``adwin``, ``kswin``, ``page_hinkley``. Error rate (feed 1 for an error, 0 for
a correct prediction): ``ddm``, ``eddm``, ``hddm_a``, ``hddm_w``, ``fhddm`` (and ``adwin``).

>>> import numpy as np
>>> det = RiverDetector("adwin", n_features=2)
>>> rng = np.random.default_rng(4)
>>> det.update(rng.normal(size=(500, 2)))
>>> det.update(rng.normal(size=(500, 2)) + [0.0, 3.0])
>>> det.drift_detected.tolist()
[False, True]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from streamproc.drift.base import (
    BatchOutputs,
    ExposesOutputs,
    Hysteresis,
    as_batch,
    offsets_for,
)

CONTINUOUS = ("adwin", "kswin", "page_hinkley")
BINARY = ("ddm", "eddm", "hddm_a", "hddm_w", "fhddm")


def _factory(name: str) -> Callable[..., Any]:
    from river import drift
    from river.drift import binary

    table: dict[str, Callable[..., Any]] = {
        "adwin": drift.ADWIN,
        "kswin": drift.KSWIN,
        "page_hinkley": drift.PageHinkley,
        "ddm": binary.DDM,
        "eddm": binary.EDDM,
        "hddm_a": binary.HDDMA,
        "hddm_w": binary.HDDMW,
        "fhddm": binary.FHDDM,
    }
    if name not in table:
        raise ValueError(f"unknown river detector {name!r}; one of {sorted(table)}")
    return table[name]


def _stat(det: Any) -> tuple[float, float]:
    """A statistic and threshold to show in alerts (NaN where river keeps none)."""
    if hasattr(det, "estimation"):  # ADWIN
        return float(det.estimation), math.nan
    if hasattr(det, "_sum_increase"):  # PageHinkley
        up = det._sum_increase - det._min_increase
        down = det._max_decrease - det._sum_decrease
        return float(max(up, down)), float(det.threshold)
    if hasattr(det, "p_value"):  # KSWIN
        return float(det.p_value), float(det.alpha)
    return math.nan, math.nan


class RiverDetector(ExposesOutputs):
    """One river detector per feature, fed element-wise; raw detections -> hysteresis."""

    def __init__(
        self,
        name: str,
        n_features: int | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        recovery: int = 2000,
    ) -> None:
        self.name = name
        self.univariate = n_features is None
        self.n_features = 1 if n_features is None else n_features
        kw = dict(params or {})
        if name == "kswin":
            kw.setdefault("seed", 0)
        make = _factory(name)
        self._dets = [make(**kw) for _ in range(self.n_features)]
        self._t = 0
        self._hyst = Hysteresis(self.n_features, recovery)
        self._firing = self._hyst.firing
        self._out = BatchOutputs(self.n_features, self.univariate)
        self._out.stat = np.full(self.n_features, np.nan)
        self._out.thr = np.full(self.n_features, np.nan)

    def update(self, x: npt.ArrayLike, offsets: npt.ArrayLike | None = None) -> None:
        a = as_batch(x, self.n_features, self.univariate)
        n = a.shape[0]
        pos = offsets_for(offsets, self._t, n)
        rows = np.full(self.n_features, -1, dtype=np.int64)
        triggers: list[tuple[int, int, float, float, int, int]] = []
        for j, det in enumerate(self._dets):
            col = a[:, j].tolist()
            for i, v in enumerate(col):
                if math.isnan(v):  # missing: skip
                    continue
                det.update(v)
                if det.drift_detected:
                    s, thr = _stat(det)
                    triggers.append((j, i, s, thr, 1, int(pos[i])))
                    if rows[j] < 0:
                        rows[j] = i
            self._out.stat[j], self._out.thr[j] = _stat(det)
        triggers.sort(key=lambda tr: tr[1])
        self._out.transitions = self._hyst.process(self._t, n, triggers, pos, self.name)
        self._out.rows = rows
        self._out.counts = np.bincount(
            np.array([tr[0] for tr in triggers], dtype=np.int64), minlength=self.n_features
        )
        self._out.detected = rows >= 0
        self._t += n
