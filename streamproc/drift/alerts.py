"""Alert events emitted by the monitors (one FIRING, later one RESOLVED per drift).

The types live in :mod:`streamproc.types` (the rollout guard raises alerts too);
:class:`AlertEvent` is the monitors' name for :class:`streamproc.types.Alert`.

>>> ev = AlertEvent(AlertType.INPUT_DRIFT, AlertState.FIRING, Severity.WARNING, "amount",
...                 "cusum_mean_up", 31.2, 31.0, 90, 1000, 1089, "mean shifted up")
>>> rec = ev.to_record(model_name="fraud", model_version="1.0.0", time_ms=0, alert_id="a1")
>>> rec["type"], rec["state"], rec["feature"], rec["window_events"]
('input_drift', 'FIRING', 'amount', 90)
"""

from __future__ import annotations

from streamproc.types import Alert, AlertState, AlertType, Severity

AlertEvent = Alert

__all__ = ["AlertEvent", "AlertState", "AlertType", "Severity"]
