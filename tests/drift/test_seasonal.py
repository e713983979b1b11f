"""Seasonal drift monitoring: quiet through a strong daily cycle, still finds a shift on top.

Simulated event time: one event every 10 s (8,640 a day). Three features with a daily cycle:
``amount`` (log-normal, its log-mean swings by 3 within-hour sigmas over the day), ``load``
(its mean swings by 2 sigma, its spread between 1 and 2) and ``steady`` (no
cycle). The reference is 14 days; each monitored stream is 7 further days.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamproc.config import DriftConfig
from streamproc.drift import DriftMonitor, ReferenceProfile
from streamproc.drift.seasonal import (
    DAY_MS,
    SeasonalDriftMonitor,
    SeasonalReference,
    bucket_of,
    hour_of_day,
)
from streamproc.errors import ConfigError

COLUMNS = ["amount", "load", "steady"]
STEP_MS = 10_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
BATCH = 1_000


def simulate(days: int, seed: int, start_day: int = 0, shift: float = 0.0, shift_from: int = 0):
    """Rows and event times; ``shift`` within-hour sigmas are added to ``amount``'s log from
    event ``shift_from`` on."""
    rng = np.random.default_rng(seed)
    t = T0 + start_day * DAY_MS + np.arange(0, days * DAY_MS, STEP_MS, dtype=np.int64)
    phase = 2 * np.pi * (hour_of_day(t) + (t % 3_600_000) / 3_600_000) / 24
    n = t.size
    log_amount = 3.0 + 3.0 * 0.5 * np.sin(phase) + 0.5 * rng.normal(size=n)
    log_amount[shift_from:] += shift * 0.5
    load = 2.0 * np.cos(phase) + (1.5 + 0.5 * np.sin(phase)) * rng.normal(size=n)
    steady = rng.normal(size=n)
    return np.column_stack([np.exp(log_amount), load, steady]), t


@pytest.fixture(scope="module")
def reference():
    x, t = simulate(14, seed=1)
    return x, t, SeasonalReference.fit(x, t, COLUMNS, "daily")


def run(monitor, x, t, seasonal):
    alerts = []
    for i in range(0, len(x), BATCH):
        kw = {"event_time_ms": t[i : i + BATCH]} if seasonal else {}
        got = monitor.update(x[i : i + BATCH], np.arange(i, min(i + BATCH, len(x))), **kw)
        alerts += [(i, a) for a in got]
    return alerts


def test_quiet_through_the_daily_cycle_with_seasonality(reference):
    _, _, ref = reference
    x, t = simulate(7, seed=2, start_day=14)
    assert run(SeasonalDriftMonitor(ref, DriftConfig()), x, t, True) == []


def test_the_default_detector_alarms_on_the_same_stream(reference):
    """Without seasonality, the detector calibrated on whole days (same reference data)
    sees each part of the day as a shift: it fires on the cycle (measured: on ``load`` in the
    first batch, then on ``amount``; both stay firing all week)."""
    xr, _, _ = reference
    prof = ReferenceProfile.from_matrix(xr, COLUMNS)
    x, t = simulate(7, seed=2, start_day=14)
    alerts = run(DriftMonitor(prof, DriftConfig()), x, t, False)
    fired = {a.feature for _, a in alerts if str(a.state) == "FIRING"}
    assert {"amount", "load"} <= fired
    assert alerts[0][0] < 8_640  # within the first simulated day
    assert "steady" not in fired


def test_half_sigma_shift_on_top_of_the_cycle_is_detected(reference):
    _, _, ref = reference
    start = 2 * 8_640 + 1_234  # on day 3, mid-morning
    x, t = simulate(7, seed=3, start_day=14, shift=0.5, shift_from=start)
    alerts = run(SeasonalDriftMonitor(ref, DriftConfig()), x, t, True)
    firing = [(i, a) for i, a in alerts if str(a.state) == "FIRING"]
    assert firing, "no alert for a 0.5 sigma shift"
    i, first = firing[0]
    assert first.feature == "amount" and first.statistic == "cusum_mean_up"
    # Measured: in the batch where the shift starts (under 500 events after it).
    assert start <= i + BATCH and i - start < 2_000
    assert {a.feature for _, a in firing} == {"amount"}


def test_weekly_buckets_and_a_short_reference():
    # 2026-01-05 is a Monday: bucket 0 of the week at 00:00 UTC.
    monday = T0 + 4 * DAY_MS
    assert bucket_of([monday, monday + 3_600_000, monday - 1], "weekly").tolist() == [0, 1, 167]
    x, t = simulate(3, seed=4)
    with pytest.raises(ConfigError, match="every bucket"):
        SeasonalReference.fit(x, t, COLUMNS, "weekly")


def test_reference_round_trips_through_the_profile(reference, tmp_path):
    xr, _, ref = reference
    prof = ReferenceProfile.from_matrix(xr, COLUMNS)
    prof.seasonal = ref.to_dict()
    back = ReferenceProfile.load(prof.save(tmp_path))
    again = SeasonalReference.of(back, "daily")
    assert np.allclose(again.mean, ref.mean) and again.residual.names == COLUMNS
    with pytest.raises(ConfigError, match="weekly"):
        SeasonalReference.of(back, "weekly")
    with pytest.raises(ConfigError, match="no seasonal reference"):
        SeasonalReference.of(ReferenceProfile.from_matrix(xr, COLUMNS), "daily")
