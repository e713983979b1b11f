from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from streamproc.drift import (
    AccuracyMonitor,
    AlertEvent,
    AlertState,
    AlertType,
    DriftConfig,
    DriftMonitor,
    QualityMonitor,
    ReferenceProfile,
    Severity,
)
from streamproc.errors import ConfigError


def test_config_from_pipeline_dict() -> None:
    cfg = DriftConfig.model_validate(
        {"detector": "adwin", "recovery_events": 500, "river_params": {"delta": 0.01}}
    )
    assert cfg.detector == "adwin" and cfg.river_params == {"delta": 0.01}
    assert DriftConfig.model_validate({}) == DriftConfig()
    with pytest.raises(ValidationError):
        DriftConfig.model_validate({"detectr": "cusum"})
    with pytest.raises(ValidationError):
        DriftConfig.model_validate({"detector": "magic"})


def test_alert_event_is_frozen() -> None:
    ev = AlertEvent(
        AlertType.DATA_QUALITY,
        AlertState.FIRING,
        Severity.INFO,
        None,
        "s",
        1.0,
        0.5,
        10,
        None,
        None,
        "m",
    )
    with pytest.raises(AttributeError):
        ev.value = 2.0  # type: ignore[misc]


def test_drift_monitor_alerts_with_offsets(normal_profile: ReferenceProfile) -> None:
    mon = DriftMonitor(normal_profile, DriftConfig(recovery_events=500))
    rng = np.random.default_rng(0)
    alerts: list[AlertEvent] = []
    offset = 10_000
    for block in range(60):
        x = rng.normal(size=(100, 3)).astype(np.float32)
        if 20 <= block < 30:
            x[:, 2] *= 3.0  # variance up on "c"
        alerts += mon.update(x, np.arange(offset, offset + 100))
        offset += 100
    assert [(a.state, a.feature) for a in alerts] == [
        (AlertState.FIRING, "c"),
        (AlertState.RESOLVED, "c"),
    ]
    fire, resolve = alerts
    assert fire.type == AlertType.INPUT_DRIFT and fire.statistic == "cusum_variance_up"
    assert fire.severity == Severity.CRITICAL  # ~9x variance >= critical ratio 4
    assert resolve.severity == fire.severity
    assert fire.value > fire.threshold
    assert fire.first_offset is not None and fire.last_offset is not None
    assert 12_000 <= fire.last_offset < 12_300
    assert fire.first_offset <= fire.last_offset
    assert resolve.last_offset is not None and resolve.last_offset < 13_000


def test_drift_monitor_builds_reference_from_stream() -> None:
    cfg = DriftConfig(reference_events=2_000, min_events=1_000)
    mon = DriftMonitor(None, cfg, columns=["x", "y"])
    rng = np.random.default_rng(1)
    assert mon.update(rng.normal(size=(1_500, 2)).astype(np.float32)) == []
    assert mon.detector is None
    mon.update(rng.normal(size=(1_000, 2)).astype(np.float32))
    assert mon.detector is not None and mon.profile is not None
    assert mon.profile.source == "stream" and mon.profile.n_rows == 2_000
    x = rng.normal(size=(1_000, 2)).astype(np.float32)
    x[:, 0] -= 2.0
    alerts = mon.update(x)
    # A 2-sigma drop raises both the mean-down and the variance arm; either may win.
    assert [a.feature for a in alerts] == ["x"]
    assert alerts[0].statistic in ("cusum_mean_down", "cusum_variance_up")


def test_prediction_drift() -> None:
    cfg = DriftConfig(reference_events=2_000, min_events=1_000)
    mon = DriftMonitor(None, cfg)
    rng = np.random.default_rng(2)
    assert mon.update_scores(rng.beta(2, 5, size=3_000)) == []
    alerts = mon.update_scores(rng.beta(5, 2, size=500))
    assert [(a.type, a.state, a.feature) for a in alerts] == [
        (AlertType.PREDICTION_DRIFT, AlertState.FIRING, None)
    ]


def test_profile_too_small_is_rejected() -> None:
    prof = ReferenceProfile.from_matrix(np.random.default_rng(3).normal(size=(100, 1)), ["a"])
    with pytest.raises(ConfigError):
        DriftMonitor(prof)


def test_disabled_monitor_is_silent(normal_profile: ReferenceProfile) -> None:
    mon = DriftMonitor(normal_profile, DriftConfig(enabled=False))
    assert mon.update(np.full((500, 3), 50.0, dtype=np.float32)) == []


def test_quality_rates_fire_once_and_resolve() -> None:
    cfg = DriftConfig(quality_window_events=100, quality_recovery_windows=2)
    qm = QualityMonitor(None, cfg)
    out = []
    for rejects in (0, 30, 40, 30, 0, 0, 0):
        out += qm.update(100, {"OUT_OF_RANGE": rejects} if rejects else {})
    assert [(a.state, a.statistic) for a in out] == [
        (AlertState.FIRING, "out_of_range_rate"),
        (AlertState.RESOLVED, "out_of_range_rate"),
    ]
    assert out[0].severity == Severity.CRITICAL  # 30% >= quality_critical_rate
    assert out[0].value == pytest.approx(0.3)


def test_quality_nan_rate_against_reference_missing_rate() -> None:
    x = np.random.default_rng(4).normal(size=(2_000, 2))
    x[::5, 0] = np.nan  # 20% missing in the reference: not an alert at 20% live
    prof = ReferenceProfile.from_matrix(x, ["a", "b"])
    qm = QualityMonitor(prof, DriftConfig(quality_window_events=100))
    mask = np.zeros((100, 2), dtype=bool)
    mask[::5, 0] = True
    assert qm.update(100, {}, nan_mask=mask) == []
    mask[:, 1] = np.arange(100) < 10  # 10% NaN where the reference had none
    alerts = qm.update(100, {}, nan_mask=mask)
    assert [(a.feature, a.statistic) for a in alerts] == [("b", "nan_rate")]


def test_new_schema_alert_once_per_id() -> None:
    qm = QualityMonitor()
    assert qm.update(3, {}, schema_ids=np.array([7, 7, -1])) == []  # baseline
    a = qm.update(4, {}, schema_ids=np.array([7, 8, 8, 9]), offsets=np.arange(100, 104))
    assert [(x.type, x.severity, x.value, x.first_offset) for x in a] == [
        (AlertType.NEW_SCHEMA, Severity.INFO, 8.0, 101),
        (AlertType.NEW_SCHEMA, Severity.INFO, 9.0, 103),
    ]
    assert qm.update(2, {}, schema_ids=np.array([8, 9])) == []


def test_accuracy_join_counts_late_unmatched_and_evicted() -> None:
    am = AccuracyMonitor(DriftConfig(label_retention=3), reference_error_rate=0.1)
    am.record_predictions(["e1", "e2", "e3", "e4", "e5"], [1, 1, 0, 0, 1])  # e1, e2 evicted
    assert am.evicted == 2 and am.pending == 3
    am.record_labels(["e5", "e1", "zz", "e3"], [1, 1, 0, 1])
    assert (am.matched, am.unmatched, am.late, am.errors) == (2, 2, 1, 1)
    am.record_labels(["e5"], [1])  # duplicate label: its prediction was consumed
    assert am.unmatched == 3 and am.late == 1


def test_accuracy_drift_alert_and_warmup() -> None:
    cfg = DriftConfig(accuracy_warmup_labels=5_000, accuracy_recovery_labels=2_000)
    am = AccuracyMonitor(cfg)
    rng = np.random.default_rng(5)
    alerts: list[AlertEvent] = []
    n = 0
    for p in [0.1] * 10 + [0.3] * 3 + [0.1] * 6:
        ids = [f"id{i}" for i in range(n, n + 1_000)]
        n += 1_000
        truth = rng.integers(0, 2, 1_000)
        pred = np.where(rng.random(1_000) < p, 1 - truth, truth)
        am.record_predictions(ids, pred.tolist())
        alerts += am.record_labels(ids, truth.tolist())
    assert am.reference_error_rate is not None and 0.09 < am.reference_error_rate < 0.12
    assert [(a.type, a.state) for a in alerts] == [
        (AlertType.ACCURACY_DRIFT, AlertState.FIRING),
        (AlertType.ACCURACY_DRIFT, AlertState.RESOLVED),
    ]
    assert 10_000 <= alerts[0].last_offset < 13_000  # default offsets: matched-label count
    assert "error rate" in alerts[0].message
