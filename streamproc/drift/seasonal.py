"""Drift monitoring that knows the daily (and weekly) cycle: a reference conditioned on time.

Traffic has a shape over the day: amounts, distances and the model's scores at 03:00 are not
those of 14:00. A detector calibrated on a whole day's data sees each hour as a shift from
the day's average and fires every morning. Here the reference is conditioned on the
event time's bucket, the hour of day (``daily``) or the hour of the week (``weekly``), in
UTC: each value is standardised by the reference's location and scale at its time (median
and MAD per bucket, robust to a few extreme values in an hour),
interpolated linearly between the centres of the two nearest buckets (a strong cycle moves
the mean within an hour: with one step per hour the residuals would trend inside each
hour, a shift the CUSUMs are built to find), and
the residuals go to the unchanged drift detectors (:class:`DriftMonitor`, the CUSUMs by
default) with a reference profile fitted on the reference's own residuals, so their
normal-score transform, prewhitening and calibration hold as before.

Why this rather than a learned seasonal baseline (an online seasonal EWMA, STL): a baseline
that keeps learning from the stream also learns a slow drift and hides it, and every
replica would learn its own; a stored per-bucket reference is fitted once, from data that
is known to be good, is the same on every replica, and a shift on top of the cycle is a
shift of the residuals, which the CUSUMs are designed for. The cost: the reference must
cover every bucket (``min_rows_per_bucket``), i.e. days (daily) or weeks (weekly) of
history with event times; the baseline is piecewise linear between hour centres, so a
cycle that jumps within an hour (a batch job at 02:00 sharp) leaves part of its step in
the residuals. Holidays are not modelled.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> t = np.arange(0, 10 * 86_400_000, 20_000)  # ten days, one event per 20 s
>>> x = (3 * np.sin(2 * np.pi * hour_of_day(t) / 24) + rng.normal(size=t.size))[:, None]
>>> ref = SeasonalReference.fit(x, t, ["amount"], "daily")
>>> mon = SeasonalDriftMonitor(ref)
>>> t2 = t + 10 * 86_400_000
>>> x2 = (3 * np.sin(2 * np.pi * hour_of_day(t2) / 24) + rng.normal(size=t.size))[:, None]
>>> mon.update(x2, event_time_ms=t2)
[]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamproc.drift.alerts import AlertEvent
from streamproc.drift.config import DriftConfig
from streamproc.drift.monitors import DriftMonitor
from streamproc.drift.profile import ReferenceProfile
from streamproc.errors import ConfigError

Seasonality = Literal["none", "daily", "weekly"]
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
BUCKETS = {"daily": 24, "weekly": 168}
_MIN_STD = 1e-9


def hour_of_day(event_time_ms: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """UTC hour of day, 0..23."""
    t = np.asarray(event_time_ms, dtype=np.int64)
    return np.asarray((t // HOUR_MS) % 24, dtype=np.int64)


def bucket_of(event_time_ms: npt.ArrayLike, period: str) -> npt.NDArray[np.int64]:
    """The reference bucket of each event time: the UTC hour of day (``daily``), or of the
    week, Monday 00:00 = 0 (``weekly``; 1970-01-01 was a Thursday).

    >>> bucket_of([0, 3_600_000], "daily").tolist(), bucket_of([0], "weekly").tolist()
    ([0, 1], [72])
    """
    t = np.asarray(event_time_ms, dtype=np.int64)
    if period == "daily":
        return hour_of_day(t)
    if period == "weekly":
        dow = (t // DAY_MS + 3) % 7
        return np.asarray(dow * 24 + hour_of_day(t), dtype=np.int64)
    raise ConfigError(f"unknown seasonality {period!r}: none, daily or weekly")


@dataclass
class SeasonalReference:
    """Per-bucket robust location and scale of each column (and of the model score), and
    the profile of the standardised residuals (what the detectors are calibrated on)."""

    period: str
    columns: list[str]
    mean: npt.NDArray[np.float64]  # (buckets, d) location: the median
    std: npt.NDArray[np.float64]  # scale: 1.4826 * MAD
    residual: ReferenceProfile
    score_mean: npt.NDArray[np.float64] | None = None  # (buckets,)
    score_std: npt.NDArray[np.float64] | None = None

    @classmethod
    def fit(
        cls,
        x: npt.ArrayLike,
        event_time_ms: npt.ArrayLike,
        columns: Sequence[str],
        period: str,
        *,
        scores: npt.ArrayLike | None = None,
        min_rows_per_bucket: int = 30,
    ) -> SeasonalReference:
        """Fit from reference rows in time order with their event times."""
        a = np.asarray(x, dtype=np.float64).reshape(-1, len(columns))
        b = bucket_of(event_time_ms, period)
        nb = BUCKETS[period]
        counts = np.bincount(b, minlength=nb)
        if counts.min() < min_rows_per_bucket:
            short = int(np.argmin(counts))
            raise ConfigError(
                f"the {period} seasonal reference needs at least {min_rows_per_bucket} rows in "
                f"every bucket; bucket {short} has {int(counts[short])}: use more history"
            )
        mean, std = _bucket_stats(a, b, nb)
        lo, hi, w = _between(event_time_ms, period)
        s_mean = s_std = None
        s_res = None
        if scores is not None:
            s = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
            sm, ss = _bucket_stats(s, b, nb)
            s_mean, s_std = sm[:, 0], ss[:, 0]
            s_res = (s - _at(sm, lo, hi, w)) / _at(ss, lo, hi, w)
        resid = (a - _at(mean, lo, hi, w)) / _at(std, lo, hi, w)
        prof = ReferenceProfile.from_matrix(resid, list(columns), scores=s_res,
                                            source="seasonal")  # fmt: skip
        return cls(period, list(columns), mean, std, prof, s_mean, s_std)

    def standardise(
        self, x: npt.ArrayLike, event_time_ms: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        lo, hi, w = _between(event_time_ms, self.period)
        a = np.asarray(x, dtype=np.float64).reshape(-1, len(self.columns))
        m, sd = _at(self.mean, lo, hi, w), _at(self.std, lo, hi, w)
        return np.asarray((a - m) / sd, dtype=np.float64)

    def standardise_scores(
        self, s: npt.ArrayLike, event_time_ms: npt.ArrayLike
    ) -> npt.NDArray[np.float64]:
        v = np.asarray(s, dtype=np.float64).reshape(-1)
        if self.score_mean is None or self.score_std is None:
            return v
        lo, hi, w = _between(event_time_ms, self.period)
        m = _at(self.score_mean[:, None], lo, hi, w)[:, 0]
        sd = _at(self.score_std[:, None], lo, hi, w)[:, 0]
        return np.asarray((v - m) / sd, dtype=np.float64)

    def select(self, columns: Sequence[str]) -> SeasonalReference:
        """The reference of a subset of its columns."""
        idx = [self.columns.index(c) for c in columns]
        res = self.residual
        prof = ReferenceProfile(columns=[res.columns[i] for i in idx], grid=res.grid,
                                n_rows=res.n_rows, source=res.source,
                                scores=res.scores)  # fmt: skip
        return SeasonalReference(self.period, list(columns), self.mean[:, idx],
                                 self.std[:, idx], prof, self.score_mean,
                                 self.score_std)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "columns": self.columns,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "residual": self.residual.to_dict(),
            "score_mean": None if self.score_mean is None else self.score_mean.tolist(),
            "score_std": None if self.score_std is None else self.score_std.tolist(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SeasonalReference:
        try:
            sm, ss = raw.get("score_mean"), raw.get("score_std")
            return cls(
                str(raw["period"]), list(raw["columns"]), np.asarray(raw["mean"], np.float64),
                np.asarray(raw["std"], np.float64),
                ReferenceProfile.from_dict(raw["residual"]),
                None if sm is None else np.asarray(sm, np.float64),
                None if ss is None else np.asarray(ss, np.float64),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid seasonal reference: {exc}") from exc

    @classmethod
    def of(cls, profile: ReferenceProfile, period: str) -> SeasonalReference:
        """The seasonal reference stored with ``profile`` (``profile.seasonal``)."""
        if not profile.seasonal:
            raise ConfigError(
                f"drift.seasonality is {period!r} but the reference profile has no seasonal "
                "reference: fit one with `streamproc models profile ... --event-times FILE "
                f"--seasonality {period}`"
            )
        ref = cls.from_dict(profile.seasonal)
        if ref.period != period:
            raise ConfigError(
                f"drift.seasonality is {period!r} but the profile's seasonal reference is "
                f"{ref.period!r}"
            )
        return ref


def _between(
    event_time_ms: npt.ArrayLike, period: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The two buckets whose centres enclose each time, and the weight of the second."""
    t = np.asarray(event_time_ms, dtype=np.int64)
    nb = BUCKETS[period]
    b = bucket_of(t, period)
    frac = (t % HOUR_MS) / HOUR_MS - 0.5  # position from the own bucket's centre
    lo = np.where(frac < 0, b - 1, b) % nb
    w = np.where(frac < 0, frac + 1.0, frac)
    return lo, (lo + 1) % nb, w


def _at(
    table: npt.NDArray[np.float64],
    lo: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
    w: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    return np.asarray(table[lo] * (1.0 - w)[:, None] + table[hi] * w[:, None], dtype=np.float64)


def _bucket_stats(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.int64], nb: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per bucket, a robust location and scale of each column (median, 1.4826 * MAD; the
    standard deviation where the MAD is 0): a few extreme values in one hour of a
    heavy-tailed column must not move that hour's baseline."""
    loc = np.empty((nb, a.shape[1]))
    scale = np.empty((nb, a.shape[1]))
    for k in range(nb):
        rows = a[b == k]
        med = np.nanmedian(rows, axis=0)
        mad = 1.4826 * np.nanmedian(np.abs(rows - med), axis=0)
        sd = np.nanstd(rows, axis=0)
        loc[k] = med
        scale[k] = np.where(mad > _MIN_STD, mad, np.where(sd > _MIN_STD, sd, 1.0))
    return loc, scale


class SeasonalDriftMonitor(DriftMonitor):
    """A :class:`DriftMonitor` on the residuals of a :class:`SeasonalReference`: each batch
    is standardised by its events' buckets before the detectors see it."""

    def __init__(
        self,
        reference: SeasonalReference,
        config: DriftConfig | None = None,
        *,
        columns: Sequence[str] | None = None,
    ) -> None:
        ref = reference if columns is None else reference.select(columns)
        self.seasonal = ref
        super().__init__(ref.residual, config, columns=ref.columns)

    def update(
        self,
        features: npt.NDArray[np.floating],
        offsets: npt.NDArray[np.integer] | None = None,
        event_time_ms: npt.NDArray[np.integer] | None = None,
    ) -> list[AlertEvent]:
        if event_time_ms is None:
            raise ValueError("a seasonal drift monitor needs the events' times")
        return super().update(self.seasonal.standardise(features, event_time_ms), offsets)

    def update_scores(
        self,
        scores: npt.NDArray[np.floating],
        offsets: npt.NDArray[np.integer] | None = None,
        event_time_ms: npt.NDArray[np.integer] | None = None,
    ) -> list[AlertEvent]:
        if event_time_ms is None:
            raise ValueError("a seasonal drift monitor needs the events' times")
        s = self.seasonal.standardise_scores(scores, event_time_ms)
        return super().update_scores(s, offsets)
