"""Per-event outlier scores against a version's reference profile, and the outlier-share alert.

The score is ECOD-style (Li et al., 2022): for each column, ``-log`` of the two-sided tail
probability of the value under the reference's empirical CDF, summed over columns. The
empirical CDF is the profile's own quantile grid (the normal-score transform of
:mod:`streamproc.drift.profile`), so nothing but the profile is kept and a batch costs one
pass of the compiled transform. It was chosen over a robust z-score (``|x - median| /
scale``, which heavy-tailed columns such as amounts dominate) and PyOD's ECOD and isolation
forest (which need the training rows) by measurement: benchmarks/insight.py,
benchmarks/RESULTS.md ("Insight").

An event is an outlier when its score exceeds the reference's ``quantile`` level
(``ReferenceProfile.tail_quantiles``, fitted with the profile), so on reference-like traffic
a share ``1 - quantile`` of events are outliers. A Bernoulli CUSUM
(:class:`~streamproc.drift.cusum.BernoulliCusumDetector`) watches that share and fires an
``outlier_rate`` alert when it rises ``ratio`` times.

>>> import numpy as np
>>> from streamproc.drift.profile import ReferenceProfile
>>> rng = np.random.default_rng(0)
>>> prof = ReferenceProfile.from_matrix(rng.normal(size=(20_000, 3)), ["a", "b", "c"])
>>> scorer = OutlierScorer(prof)
>>> s = scorer.score(np.array([[0.0, 0.0, 0.0], [0.0, 6.0, 0.0]]))
>>> bool(s[0] < scorer.threshold < s[1])
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from streamproc.drift.cusum import BernoulliCusumDetector, conservative_error_rate
from streamproc.drift.profile import ColumnProfile, ReferenceProfile, TailScorer
from streamproc.types import Alert, AlertState, AlertType, Severity

Method = Literal["ecod", "robust_z"]


class OutlierScorer:
    """Scores rows against ``profile``; :attr:`threshold` marks the outliers."""

    def __init__(
        self,
        profile: ReferenceProfile,
        *,
        quantile: float = 0.99,
        method: Method = "ecod",
        columns: Sequence[str] | None = None,
    ) -> None:
        cols = profile.columns if columns is None else [profile.column(c) for c in columns]
        self.names = [c.name for c in cols]
        self.method: Method = method
        self.quantile = quantile
        self.reference_rows = profile.n_rows
        self._tail = TailScorer(cols, np.asarray(profile.grid))
        self._median = np.array([c.median for c in cols])
        self._scale = np.array([c.scale if c.scale > 0 else 1.0 for c in cols])
        stored = (profile.tail_quantiles or {}).get(str(quantile))
        if method == "ecod" and stored is not None and columns is None:
            self.threshold = float(stored)
        else:
            self.threshold = self._simulated_threshold(cols)

    def score(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Outlier scores of the rows of ``x`` (higher: further out of the reference)."""
        if self.method == "robust_z":
            a = np.asarray(x, dtype=np.float64).reshape(-1, len(self.names))
            r = np.abs(a - self._median) / self._scale
            return np.asarray(np.nan_to_num(r, nan=0.0).sum(axis=1), dtype=np.float64)
        return self._tail.scores(x)

    def _simulated_threshold(self, cols: Sequence[ColumnProfile]) -> float:
        """The threshold where the profile stores none (an older file, a column subset):
        the quantile of the score on rows drawn from the profile's marginals (independent
        columns; seeded, so every replica agrees)."""
        rng = np.random.default_rng(0)
        knots = self._tail.tables.knots
        grid = self._tail.tables.grid
        n = 20_000
        # Inverse-CDF sampling from each column's quantile grid.
        u = rng.standard_normal((n, knots.shape[0])).clip(grid[0], grid[-1])
        rows = np.empty_like(u)
        for j in range(knots.shape[0]):
            rows[:, j] = np.interp(u[:, j], grid, knots[j])
        return float(np.quantile(self.score(rows), self.quantile))


class OutlierRateMonitor:
    """Fires an ``outlier_rate`` alert when the share of outliers rises ``ratio`` times over
    the reference's ``1 - quantile`` (see :attr:`p0`), at ``arl`` in-control events between
    false alarms."""

    def __init__(
        self,
        scorer: OutlierScorer,
        *,
        arl: float = 2e6,
        ratio: float = 3.0,
        recovery: int = 10_000,
    ) -> None:
        self.scorer = scorer
        # The reference's share, raised by its standard error (as for a reference error
        # rate): a Bernoulli CUSUM designed for a p0 a little under the true share
        # false-alarms far more often than its design says.
        n = max(scorer.reference_rows, 100)
        self.p0 = conservative_error_rate(round((1.0 - scorer.quantile) * n), n, z=3.0)
        self.detector = BernoulliCusumDetector(self.p0, arl=arl, ratio=ratio, recovery=recovery)
        self.events = 0
        self.outliers = 0

    def update(
        self, scores: npt.NDArray[np.float64], offsets: npt.NDArray[np.int64] | None = None
    ) -> list[Alert]:
        """Feed one batch's outlier scores; returns the alerts it raised."""
        flags = (scores > self.scorer.threshold).astype(np.float64)
        self.events += int(flags.size)
        self.outliers += int(flags.sum())
        if not flags.size:
            return []
        self.detector.update(flags, offsets)
        alerts = []
        for tr in self.detector.transitions:
            firing = tr.state == AlertState.FIRING
            share = tr.estimate if math.isfinite(tr.estimate) else float("nan")
            msg = (
                f"outlier share ~{share:.4f} over the last {tr.window_events} events "
                f"(reference {self.p0:.4f}; score above {self.scorer.threshold:.2f}, "
                f"the reference's {self.scorer.quantile} quantile)"
                if firing
                else f"outlier share back to the reference's {self.p0:.4f}"
            )
            alert = Alert(AlertType.OUTLIER_RATE, tr.state, Severity.WARNING, None, tr.statistic,
                          tr.value, tr.threshold, tr.window_events, tr.first_offset,
                          tr.last_offset, msg)  # fmt: skip
            alerts.append(alert)
        return alerts
