"""Alert routing rules from the pipeline config's ``alerts:`` section.

``min_severity`` drops quieter alerts from the alerts topic (they are still counted);
``webhook`` POSTs each routed alert as JSON from a background thread (bounded queue,
short timeout: a slow receiver never stalls the stream; failures are logged and counted).

>>> r = AlertRouter.from_config({"min_severity": "WARNING"})
>>> r.routes({"severity": "INFO"}), r.routes({"severity": "CRITICAL"})
(False, True)
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)
_ORDER = ("INFO", "WARNING", "CRITICAL")


class AlertRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_severity: Literal["INFO", "WARNING", "CRITICAL"] = "INFO"
    webhook: str | None = None
    webhook_timeout_s: float = 2.0


class AlertRouter:
    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.floor = _ORDER.index(rules.min_severity)
        self.dropped = 0
        self.webhook_failures = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1000)
        if rules.webhook:
            threading.Thread(target=self._post_loop, daemon=True, name="alert-webhook").start()

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> AlertRouter:
        return cls(AlertRules.model_validate(raw))

    def routes(self, alert: dict[str, Any]) -> bool:
        """True when the alert goes out; False (and counted) when below the floor."""
        if _ORDER.index(alert["severity"]) < self.floor:
            self.dropped += 1
            return False
        return True

    def notify(self, record: dict[str, Any]) -> None:
        if not self.rules.webhook:
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.webhook_failures += 1
            log.warning("alert webhook queue full; dropped alert %s", record.get("alert_id"))

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
