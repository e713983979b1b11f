"""Online drift detection: reference profiles, detectors, monitors and alerts (pure logic).

The pipeline calls the monitors once per micro-batch; see ``benchmarks/drift`` for
measured delays, false-alarm rates and throughput.
"""

from streamproc.drift.alerts import AlertEvent, AlertState, AlertType, Severity
from streamproc.drift.base import Detector, NullDetector, Transition
from streamproc.drift.config import DriftConfig
from streamproc.drift.cusum import BernoulliCusumDetector, CusumDetector
from streamproc.drift.factory import make_detector, make_error_detector
from streamproc.drift.monitors import AccuracyMonitor, DriftMonitor, QualityMonitor
from streamproc.drift.profile import ColumnProfile, ReferenceProfile
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
    "make_detector",
    "make_error_detector",
]
