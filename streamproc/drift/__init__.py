"""Online drift detection: reference profiles, detectors, monitors and alerts (pure logic).

The pipeline calls the monitors once per micro-batch; see ``benchmarks/drift`` for
measured delays, false-alarm rates and throughput.

Default detector (``DriftConfig().detector == "cusum"``), per feature:

1. normal-score transform fitted on the reference (quantile knots on a normal-score grid,
   saturating tails): heavy-tailed or skewed columns become N(0, 1) under no drift;
2. AR(1) prewhitening with the reference lag-1 autocorrelation ``phi``: increments are
   i.i.d. under no drift, so the calibration holds for autocorrelated streams;
3. three one-sided CUSUMs (mean up, mean down, variance up) tuned for a 0.5-sigma shift
   and a doubled variance, thresholds solved exactly (Siegmund / Brook-Evans) so that all
   arms of all features together raise ``false_alarms_per_million * calibration_margin``
   false alarms per million events;
4. hysteresis: a detection fires an alert, the alert resolves after ``recovery_events``
   events without another detection.

Limitations: discrete (few-valued) columns use mid-rank scores, so their calibration is
approximate; a reference fitted on shuffled training rows has ``phi = 0`` and will
under-estimate false alarms on an autocorrelated live stream.
"""

from streamproc.drift.accuracy import AccuracyMonitor
from streamproc.drift.alerts import AlertEvent, AlertState, AlertType, Severity
from streamproc.drift.base import Detector, NullDetector, Transition
from streamproc.drift.config import DriftConfig
from streamproc.drift.cusum import (
    BernoulliCusumDetector,
    CusumDetector,
    conservative_error_rate,
)
from streamproc.drift.factory import make_detector, make_error_detector
from streamproc.drift.monitors import DriftMonitor
from streamproc.drift.profile import ColumnProfile, ReferenceProfile
from streamproc.drift.quality import QualityMonitor
from streamproc.drift.river_detectors import RiverDetector
from streamproc.drift.window import WindowDetector

__all__ = [
    "AccuracyMonitor",
    "AlertEvent",
    "AlertState",
    "AlertType",
    "BernoulliCusumDetector",
    "ColumnProfile",
    "CusumDetector",
    "Detector",
    "DriftConfig",
    "DriftMonitor",
    "NullDetector",
    "QualityMonitor",
    "ReferenceProfile",
    "RiverDetector",
    "Severity",
    "Transition",
    "WindowDetector",
    "conservative_error_rate",
    "make_detector",
    "make_error_detector",
]
