"""Alert subscriptions for Python applications: sync (confluent-kafka) and async (aiokafka).

Both filter by a severity floor and by model:

>>> keep = alert_filter(severity="WARNING", model="fraud")
>>> keep({"severity": "CRITICAL", "model_name": "fraud"}), keep({"severity": "INFO",
...     "model_name": "fraud"}), keep({"severity": "CRITICAL", "model_name": "other"})
(True, False, False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from streamproc.kafka.aio import AsyncRecordConsumer
from streamproc.kafka.clients import RecordConsumer, RegistryConnection
from streamproc.kafka.configuration import Connection
from streamproc.types import Severity


def alert_filter(
    severity: str | None = None, model: str | None = None
) -> Callable[[dict[str, Any]], bool]:
    floor = Severity(severity.upper()) if severity else Severity.INFO

    def keep(rec: dict[str, Any]) -> bool:
        if not Severity(rec["severity"]).at_least(floor):
            return False
        return model is None or rec["model_name"] == model

    return keep


class AlertSubscription(RecordConsumer):
    """``for alert in AlertSubscription(bootstrap, registry, "streamproc.alerts", ...)``."""

    def __init__(
        self,
        bootstrap: Connection,
        registry_url: RegistryConnection,
        topic: str = "streamproc.alerts",
        *,
        severity: str | None = None,
        model: str | None = None,
        group_id: str | None = None,
        from_beginning: bool = True,
    ) -> None:
        super().__init__(bootstrap, registry_url, topic, group_id, from_beginning)
        self.keep = alert_filter(severity, model)

    def alerts(self, max_records: int = 500, timeout_s: float = 1.0) -> list[dict[str, Any]]:
        return [r for _, r in self.poll_batch(max_records, timeout_s) if self.keep(r)]

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        while True:
            yield from self.alerts()


class AsyncAlertSubscription(AsyncRecordConsumer):
    """``async for msg, alert in AsyncAlertSubscription(...)``, filtered the same way."""

    def __init__(
        self,
        bootstrap: Connection,
        registry_url: RegistryConnection,
        topic: str = "streamproc.alerts",
        *,
        severity: str | None = None,
        model: str | None = None,
        group_id: str | None = None,
        from_beginning: bool = True,
    ) -> None:
        super().__init__(bootstrap, registry_url, topic, group_id, from_beginning,
                         where=alert_filter(severity, model))  # fmt: skip
