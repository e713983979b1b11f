"""Windowed PSI and KS detectors: compare each tumbling window of ``window`` events with
the reference, on the profile's normal scores.

Bins are equiprobable under the reference (normal-score quantiles); for discrete columns
the expected bin shares come from the reference category frequencies. Thresholds follow
the false-alarm budget: a window of ``W`` events may alarm with probability
``W / arl`` per feature, using the chi-square law of PSI (``PSI ~ chi2(B-1) / W``) and the
DKW bound for KS, with ``W`` deflated by ``(1 - phi) / (1 + phi)`` for autocorrelation.

>>> import numpy as np
>>> from streamproc.drift.profile import ReferenceProfile
>>> rng = np.random.default_rng(3)
>>> prof = ReferenceProfile.from_matrix(rng.normal(size=(20_000, 1)), ["a"])
>>> det = WindowDetector.from_profile(prof, kind="ks", arl=1e7, window=1_000)
>>> det.update(rng.normal(size=(3_000, 1)))
>>> bool(det.drift_detected[0])
False
>>> det.update(rng.normal(size=(2_000, 1)) * 3.0)
>>> bool(det.drift_detected[0]), det.transitions[0].statistic
(True, 'ks')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from streamproc.drift import _kernels as K
from streamproc.drift._stats import chi2_isf, norm_ppf
from streamproc.drift.base import (
    BatchOutputs,
    ExposesOutputs,
    Hysteresis,
    as_batch,
    offsets_for,
)
from streamproc.drift.profile import TAIL_SPAN, ColumnProfile, ReferenceProfile, TransformTables


class WindowDetector(ExposesOutputs):
    """PSI or KS per feature on tumbling windows (a tick every ``window`` events)."""

    def __init__(
        self,
        columns: Sequence[ColumnProfile],
        grid: Sequence[float],
        *,
        kind: Literal["psi", "ks"],
        arl: float,
        window: int = 2000,
        bins: int | None = None,
        recovery: int = 2000,
        univariate: bool = False,
    ) -> None:
        self.name: str = kind
        self.kind = kind
        d = len(columns)
        self.n_features = d
        self.univariate = univariate
        self.window = int(window)
        nb = bins if bins is not None else (10 if kind == "psi" else 50)
        self._tables = TransformTables.from_columns(columns, np.asarray(grid, dtype=np.float64))
        self._edges = norm_ppf(np.arange(1, nb) / nb)
        self._expected = np.full((d, nb), 1.0 / nb)
        for j, c in enumerate(columns):
            if c.categories:
                self._expected[j] = self._category_bins(j, c.categories)
        phi = self._tables.phi
        w_eff = self.window * (1.0 - phi) / (1.0 + phi)
        alpha = min(0.5, self.window / arl)
        if kind == "psi":
            self._thr = chi2_isf(alpha, nb - 1) / w_eff
        else:
            self._thr = np.sqrt(math.log(2.0 / alpha) / (2.0 * w_eff))
        self._counts = np.zeros((d, nb))
        self._filled = np.zeros(d)
        self._in_window = 0
        self._window_first = 0
        self._t = 0
        self._hyst = Hysteresis(d, max(int(recovery), self.window + 1))
        self._firing = self._hyst.firing
        self._out = BatchOutputs(d, univariate)
        self._out.thr = np.asarray(self._thr, dtype=np.float64) * np.ones(d)
        self._zero_phi = np.zeros(d)
        self._prev = np.zeros(d)
        self._has = np.zeros(d, dtype=np.bool_)

    @classmethod
    def from_profile(
        cls, profile: ReferenceProfile, *, columns: Sequence[str] | None = None, **kw: object
    ) -> WindowDetector:
        cols = profile.columns if columns is None else [profile.column(c) for c in columns]
        return cls(cols, profile.grid, **kw)  # type: ignore[arg-type]

    def _scores(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        t = self._tables
        z = np.empty_like(a)
        K.normal_scores_kernel(
            a,
            t.knots,
            t.grid,
            t.lo_scale,
            t.hi_scale,
            t.z_mean,
            t.z_std,
            self._zero_phi,
            self._prev,
            self._has,
            TAIL_SPAN,
            z,
        )
        return z

    def _category_bins(self, j: int, cats: dict[str, float]) -> npt.NDArray[np.float64]:
        vals = np.array([float(v) for v in cats])
        freq = np.array(list(cats.values()))
        a = np.zeros((vals.size, self.n_features))
        a[:, j] = vals
        t = self._tables
        z = np.empty_like(a)
        K.normal_scores_kernel(
            a,
            t.knots,
            t.grid,
            t.lo_scale,
            t.hi_scale,
            t.z_mean,
            t.z_std,
            np.zeros(self.n_features),
            np.zeros(self.n_features),
            np.zeros(self.n_features, dtype=np.bool_),
            TAIL_SPAN,
            z,
        )
        b = np.searchsorted(self._edges, z[:, j])
        exp = np.bincount(b, weights=freq, minlength=self._edges.size + 1)
        return np.asarray(exp / exp.sum(), dtype=np.float64)

    def _tick(self) -> npt.NDArray[np.float64]:
        n = np.maximum(self._counts.sum(axis=1, keepdims=True), 1.0)
        obs = self._counts / n
        if self.kind == "psi":
            nb = self._expected.shape[1]
            o = (self._counts + 0.5) / (n + 0.5 * nb)
            e = self._expected
            stat = np.sum((o - e) * np.log(o / e), axis=1)
        else:
            stat = np.max(np.abs(np.cumsum(obs - self._expected, axis=1)), axis=1)
        self._counts[:] = 0.0
        self._in_window = 0
        return np.asarray(stat, dtype=np.float64)

    def update(self, x: npt.ArrayLike, offsets: npt.ArrayLike | None = None) -> None:
        a = as_batch(x, self.n_features, self.univariate)
        n, d = a.shape
        pos = offsets_for(offsets, self._t, n)
        z = self._scores(a)
        triggers: list[tuple[int, int, float, float, int, int]] = []
        rows = np.full(d, -1, dtype=np.int64)
        start = 0
        while start < n:
            if self._in_window == 0:
                self._window_first = int(pos[start])
            take = min(n - start, self.window - self._in_window)
            seg = z[start : start + take]
            ok = np.isfinite(seg)
            b = np.searchsorted(self._edges, np.where(ok, seg, 0.0))
            nb = self._edges.size + 1
            flat = (np.arange(d)[None, :] * nb + b)[ok]
            self._counts += np.bincount(flat, minlength=d * nb).reshape(d, nb)
            self._in_window += take
            start += take
            if self._in_window == self.window:
                stat = self._tick()
                self._out.stat = stat
                row = start - 1
                for j in np.flatnonzero(stat > self._thr):
                    triggers.append(
                        (
                            int(j),
                            row,
                            float(stat[j]),
                            float(self._out.thr[j]),
                            self.window,
                            self._window_first,
                        )
                    )
                    if rows[j] < 0:
                        rows[j] = row
        triggers.sort(key=lambda tr: tr[1])
        self._out.transitions = self._hyst.process(self._t, n, triggers, pos, self.kind)
        self._out.rows = rows
        self._out.counts = np.bincount(
            np.array([tr[0] for tr in triggers], dtype=np.int64), minlength=self.n_features
        )
        self._out.detected = rows >= 0
        self._t += n
