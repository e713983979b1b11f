"""Alert routing rules from the pipeline config's ``alerts:`` section.

``min_severity`` drops quieter alerts from the alerts topic (they are still counted);
``webhook`` POSTs each routed alert as JSON from a background thread (bounded queue,
short timeout: a slow receiver never stalls the stream; failures are logged and counted).

>>> from streamproc.types import AlertState, AlertType
>>> def alert(severity):
...     return Alert(AlertType.INPUT_DRIFT, AlertState.FIRING, severity, "amount", "s",
...                  1.0, 1.0, 10, None, None, "")
>>> r = AlertRouter(AlertRules(min_severity=Severity.WARNING))
>>> r.routes(alert(Severity.INFO)), r.routes(alert(Severity.CRITICAL))
(False, True)
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import httpx

from streamproc.config import AlertRules
from streamproc.types import Alert, Severity

log = logging.getLogger(__name__)

__all__ = ["AlertRouter", "AlertRules"]


class AlertRouter:
    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.floor = Severity(rules.min_severity)
        self.dropped = 0
        self.webhook_failures = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1000)
        if rules.webhook:
            threading.Thread(target=self._post_loop, daemon=True, name="alert-webhook").start()

    def routes(self, alert: Alert) -> bool:
        """True when the alert goes out; False (and counted) when below the floor."""
        if not alert.severity.at_least(self.floor):
            self.dropped += 1
            return False
        return True

    def notify(self, alert: Alert) -> None:
        """POST ``alert`` (stamped with its identity and time) as its ``Alert`` record."""
        if not self.rules.webhook:
            return
        try:
            self._queue.put_nowait(alert.to_record())
        except queue.Full:
            self.webhook_failures += 1
            log.warning("alert webhook queue full; dropped alert %s", alert.alert_id)

    def _post_loop(self) -> None:
        assert self.rules.webhook is not None
        with httpx.Client(timeout=self.rules.webhook_timeout_s) as client:
            while True:
                record = self._queue.get()
                try:
                    client.post(self.rules.webhook, json=record).raise_for_status()
                except httpx.HTTPError as exc:
                    self.webhook_failures += 1
                    log.warning("alert webhook failed: %s", exc)
