"""Alert events emitted by the monitors (one FIRING, later one RESOLVED per drift).

>>> ev = AlertEvent(AlertType.INPUT_DRIFT, AlertState.FIRING, Severity.WARNING, "amount",
...                 "cusum_mean_up", 31.2, 31.0, 90, 1000, 1089, "mean shifted up")
>>> rec = ev.to_record(model_name="fraud", model_version="1.0.0", time_ms=0, alert_id="a1")
>>> rec["type"], rec["state"], rec["feature"], rec["window_events"]
('input_drift', 'FIRING', 'amount', 90)
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class AlertType(enum.StrEnum):
    INPUT_DRIFT = "input_drift"
    PREDICTION_DRIFT = "prediction_drift"
    DATA_QUALITY = "data_quality"
    ACCURACY_DRIFT = "accuracy_drift"
    NEW_SCHEMA = "new_schema"


class AlertState(enum.StrEnum):
    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


class Severity(enum.StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert state change; maps onto ``schemas/Alert.avsc`` with :meth:`to_record`."""

    type: AlertType
    state: AlertState
    severity: Severity
    feature: str | None
    statistic: str
    value: float
    threshold: float
    window_events: int
    first_offset: int | None
    last_offset: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(type=str(self.type), state=str(self.state), severity=str(self.severity))
        return d

    def to_record(
        self, *, model_name: str, model_version: str, time_ms: int, alert_id: str
    ) -> dict[str, Any]:
        """The Avro ``Alert`` record (the caller supplies identity and time)."""
        return {
            "alert_id": alert_id,
            "model_name": model_name,
            "model_version": model_version,
            "time": int(time_ms),
            **self.as_dict(),
            "value": float(self.value),
            "threshold": float(self.threshold),
            "window_events": int(self.window_events),
        }
