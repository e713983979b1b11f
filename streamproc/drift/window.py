"""Windowed PSI and KS detectors: compare each tumbling window of ``window`` events with
the reference, on the profile's normal scores; and :class:`CategoryDetector`, a G-test of
category frequencies for discrete columns (booleans, one-hot columns, small counts).

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
from streamproc.drift.base import (
    BatchOutputs,
    ExposesOutputs,
    Hysteresis,
    as_batch,
    offsets_for,
)
from streamproc.drift.profile import ColumnProfile, ReferenceProfile, TransformTables
from streamproc.stats import chi2_isf, norm_ppf

# The largest whole-number category a direct bin table serves (CategoryDetector).
DIRECT_MAX = 4096


class _TumblingWindows(ExposesOutputs):
    """The update loop shared by the window detectors: fill a window of ``window`` events
    (``_accumulate``), test it when full (``_tick``), hand crossings to the hysteresis.

    Subclasses set ``window``, ``n_features``, ``univariate``, ``name``, ``_out.thr``,
    ``_hyst``, ``_t``, ``_in_window`` and ``_window_first``.
    """

    window: int
    n_features: int
    univariate: bool
    name: str
    _hyst: Hysteresis
    _t: int
    _in_window: int
    _window_first: int

    def _prepare(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return a

    def _accumulate(self, seg: npt.NDArray[np.float64]) -> None:
        raise NotImplementedError

    def _tick(self) -> npt.NDArray[np.float64]:
        raise NotImplementedError

    def update(self, x: npt.ArrayLike, offsets: npt.ArrayLike | None = None) -> None:
        a = as_batch(x, self.n_features, self.univariate)
        n, d = a.shape
        pos = offsets_for(offsets, self._t, n)
        v = self._prepare(a)
        triggers: list[tuple[int, int, float, float, int, int]] = []
        rows = np.full(d, -1, dtype=np.int64)
        start = 0
        while start < n:
            if self._in_window == 0:
                self._window_first = int(pos[start])
            take = min(n - start, self.window - self._in_window)
            self._accumulate(v[start : start + take])
            self._in_window += take
            start += take
            if self._in_window == self.window:
                stat = self._tick()
                self._out.stat = stat
                row = start - 1
                for jj in np.flatnonzero(stat > self._out.thr):
                    j = int(jj)
                    thr = float(self._out.thr[j])
                    triggers.append((j, row, float(stat[j]), thr, self.window, self._window_first))
                    if rows[j] < 0:
                        rows[j] = row
        triggers.sort(key=lambda tr: tr[1])
        self._out.transitions = self._hyst.process(self._t, n, triggers, pos, self.name)
        self._out.rows = rows
        self._out.counts = np.bincount(
            np.array([tr[0] for tr in triggers], dtype=np.int64), minlength=self.n_features
        )
        self._out.detected = rows >= 0
        self._t += n


class WindowDetector(_TumblingWindows):
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

    @classmethod
    def from_profile(
        cls, profile: ReferenceProfile, *, columns: Sequence[str] | None = None, **kw: object
    ) -> WindowDetector:
        cols = profile.columns if columns is None else [profile.column(c) for c in columns]
        return cls(cols, profile.grid, **kw)  # type: ignore[arg-type]

    def _scores(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self._tables.scores(a)  # windows compare distributions: no prewhitening

    def _category_bins(self, j: int, cats: dict[str, float]) -> npt.NDArray[np.float64]:
        vals = np.array([float(v) for v in cats])
        freq = np.array(list(cats.values()))
        a = np.zeros((vals.size, self.n_features))
        a[:, j] = vals
        z = self._tables.scores(a)
        b = np.searchsorted(self._edges, z[:, j])
        exp = np.bincount(b, weights=freq, minlength=self._edges.size + 1)
        return np.asarray(exp / exp.sum(), dtype=np.float64)

    def _tick(self) -> npt.NDArray[np.float64]:
        n = np.maximum(self._counts.sum(axis=1, keepdims=True), 1.0)
        obs = self._counts / n
        if self.kind == "psi":
            nb = self._expected.shape[1]
            o = (self._counts + 0.5) / (n + 0.5 * nb)
            # Same smoothing for the reference shares: bins a discrete column never reaches
            # have expected share 0, which made PSI infinite.
            e = (self._expected * n + 0.5) / (n + 0.5 * nb)
            stat = np.sum((o - e) * np.log(o / e), axis=1)
        else:
            stat = np.max(np.abs(np.cumsum(obs - self._expected, axis=1)), axis=1)
        self._counts[:] = 0.0
        self._in_window = 0
        return np.asarray(stat, dtype=np.float64)

    def _prepare(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self._scores(a)

    def _accumulate(self, seg: npt.NDArray[np.float64]) -> None:
        d = seg.shape[1]
        ok = np.isfinite(seg)
        b = np.searchsorted(self._edges, np.where(ok, seg, 0.0))
        nb = self._edges.size + 1
        flat = (np.arange(d)[None, :] * nb + b)[ok]
        self._counts += np.bincount(flat, minlength=d * nb).reshape(d, nb)


MIN_EXPECTED = 20.0  # categories expected fewer times per window pool into the "other" bin


class CategoryDetector(_TumblingWindows):
    """G-test of category frequencies per discrete column on tumbling windows.

    Bins are the reference categories (``ColumnProfile.categories``) expected at least
    ``MIN_EXPECTED`` times per window, plus one "other" bin pooling the rarer categories
    and any value the reference never held. The reference shares are Laplace-smoothed
    (``(n_ref * f + 0.5) / (n_ref + 0.5 * B)``), so every bin has a positive expected share
    and the statistic is finite even for a value never seen before. Each window of ``W``
    events (NaN excluded) gives ``G = 2 * sum(O * ln(O / E))``, which under no drift is
    ``chi2(k - 1)`` for the ``k`` bins the reference reaches; it is deflated by
    ``(1 - phi) / (1 + phi)`` for positive lag-1 autocorrelation and by
    ``n_ref / (n_ref + W)`` for the sampling error of the reference shares (the two-sample
    form of the test). The threshold is
    ``chi2_isf(W / arl, k - 1)`` (Wilson-Hilferty): a window alarms with
    probability ``W / arl`` per column (Bonferroni over columns and windows), i.e. one false
    alarm per ``arl`` events per column. Hysteresis as in the other detectors.

    >>> import numpy as np
    >>> from streamproc.drift.profile import ReferenceProfile
    >>> rng = np.random.default_rng(5)
    >>> prof = ReferenceProfile.from_matrix((rng.random((50_000, 1)) < 0.05) * 1.0, ["flag"])
    >>> det = CategoryDetector.from_profile(prof, arl=1e8, window=2_000)
    >>> det.update((rng.random((20_000, 1)) < 0.05) * 1.0)
    >>> bool(det.in_drift[0])
    False
    >>> det.update((rng.random((4_000, 1)) < 0.15) * 1.0)
    >>> [(str(t.state), t.statistic) for t in det.transitions]
    [('FIRING', 'g_test')]
    """

    name = "g_test"

    def __init__(
        self,
        columns: Sequence[ColumnProfile],
        *,
        arl: float,
        window: int = 2000,
        recovery: int = 2000,
        univariate: bool = False,
    ) -> None:
        d = len(columns)
        self.n_features = d
        self.univariate = univariate
        self.window = int(window)
        self._values: list[npt.NDArray[np.float64]] = []  # sorted category values
        self._bin_of: list[npt.NDArray[np.int64]] = []  # their bin (last bin: "other")
        self._expected: list[npt.NDArray[np.float64]] = []
        thr = np.empty(d)
        alpha = min(0.5, self.window / arl)
        for j, c in enumerate(columns):
            if not c.categories:
                raise ValueError(f"column {c.name!r} has no category frequencies")
            vals = np.array([float(v) for v in c.categories])
            freq = np.array(list(c.categories.values()), dtype=np.float64)
            order = np.argsort(vals)
            vals, freq = vals[order], freq[order]
            keep = freq * self.window >= MIN_EXPECTED
            nk = int(keep.sum())
            bins = np.full(vals.size, nk, dtype=np.int64)
            bins[keep] = np.arange(nk)
            share = np.append(freq[keep], max(0.0, 1.0 - float(freq[keep].sum())))
            nb = nk + 1
            n_ref = max(c.n, 1)
            self._values.append(vals)
            self._bin_of.append(bins)
            self._expected.append((share * n_ref + 0.5) / (n_ref + 0.5 * nb))
            # An "other" bin the reference never reached stays empty under no drift and
            # adds no degree of freedom.
            dof = max(1, nk - 1 if share[-1] <= 1e-12 else nk)
            thr[j] = chi2_isf(alpha, dof)
        # Positive autocorrelation inflates the variance of window counts by
        # (1 + phi) / (1 - phi); the reference's own sampling error adds W / n_ref.
        self._deflate = np.array(
            [
                (1.0 - max(c.phi, 0.0)) / (1.0 + max(c.phi, 0.0)) * c.n / (c.n + self.window)
                for c in columns
            ]
        )
        # The binning kernel's padded tables; ``_counts[j]`` is a view of column j's row.
        width = max(v.size for v in self._values)
        nbins = max(e.size for e in self._expected)
        self._k_values = np.full((d, width), np.inf)
        self._k_bin_of = np.zeros((d, width), dtype=np.int64)
        for j, (vals, bins) in enumerate(zip(self._values, self._bin_of, strict=True)):
            self._k_values[j, : vals.size] = vals
            self._k_bin_of[j, : bins.size] = bins
        self._k_n_values = np.array([v.size for v in self._values], dtype=np.int64)
        self._k_other = np.array([e.size - 1 for e in self._expected], dtype=np.int64)
        self._k_counts = np.zeros((d, nbins))
        # Columns whose categories are all whole numbers in [0, DIRECT_MAX): a table from
        # each whole number below the largest category + 1 to its bin ("other" where no
        # category is), so the kernel bins them without a search (about half the cost of
        # the searched bins; benchmarks/README.md).
        self._k_direct_len = np.array(
            [
                int(v[-1]) + 1
                if v.size and np.all((v >= 0) & (v < DIRECT_MAX) & (np.floor(v) == v))
                else 0
                for v in self._values
            ],
            dtype=np.int64,
        )
        span = max(int(self._k_direct_len.max(initial=0)), 1)
        self._k_direct = np.zeros((d, span), dtype=np.int64)
        for j, (vals, bins) in enumerate(zip(self._values, self._bin_of, strict=True)):
            if size := int(self._k_direct_len[j]):
                self._k_direct[j, :size] = self._expected[j].size - 1  # "other"
                self._k_direct[j, vals.astype(np.int64)] = bins
        self._counts = [self._k_counts[j, : e.size] for j, e in enumerate(self._expected)]
        self._in_window = 0
        self._window_first = 0
        self._t = 0
        self._hyst = Hysteresis(d, max(int(recovery), self.window + 1))
        self._firing = self._hyst.firing
        self._out = BatchOutputs(d, univariate)
        self._out.thr = thr

    @classmethod
    def from_profile(
        cls, profile: ReferenceProfile, *, columns: Sequence[str] | None = None, **kw: object
    ) -> CategoryDetector:
        cols = profile.columns if columns is None else [profile.column(c) for c in columns]
        return cls(cols, **kw)  # type: ignore[arg-type]

    def _bins(self, j: int, v: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Bin index per finite value of ``v``; values no category matches go to "other".

        The reference form of what ``_accumulate``'s kernel does for a whole segment."""
        vals = self._values[j]
        i = np.clip(np.searchsorted(vals, v), 1, max(vals.size - 1, 1))
        lo = vals[np.minimum(i - 1, vals.size - 1)]
        hi = vals[np.minimum(i, vals.size - 1)]
        near = np.where(np.abs(v - lo) <= np.abs(hi - v), i - 1, i)
        near = np.minimum(near, vals.size - 1)
        hit = np.abs(v - vals[near]) <= 1e-6 * np.maximum(1.0, np.abs(vals[near]))
        other = self._expected[j].size - 1
        return np.where(hit, self._bin_of[j][near], other)

    def _tick(self) -> npt.NDArray[np.float64]:
        stat = np.zeros(self.n_features)
        for j, cnt in enumerate(self._counts):
            n = cnt.sum()
            if n > 0:
                e = self._expected[j] * n
                pos = cnt > 0
                g = 2.0 * float(np.sum(cnt[pos] * np.log(cnt[pos] / e[pos])))
                stat[j] = max(g, 0.0) * self._deflate[j]
            cnt[:] = 0.0
        self._in_window = 0
        return stat

    def _accumulate(self, seg: npt.NDArray[np.float64]) -> None:
        K.category_counts_kernel(
            np.ascontiguousarray(seg, dtype=np.float64),
            self._k_values, self._k_n_values, self._k_bin_of, self._k_other, self._k_counts,
            self._k_direct, self._k_direct_len,
        )  # fmt: skip
