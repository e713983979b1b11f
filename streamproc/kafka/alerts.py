"""Alert subscriptions for Python applications: sync (confluent-kafka) and async (aiokafka),
and :class:`AlertPublisher`, which writes alerts raised outside the stream processor
(``streamproc serve``) onto the same topic in the same form.

The subscriptions filter by a severity floor and by model:

>>> keep = alert_filter(severity="WARNING", model="fraud")
>>> keep({"severity": "CRITICAL", "model_name": "fraud"}), keep({"severity": "INFO",
...     "model_name": "fraud"}), keep({"severity": "CRITICAL", "model_name": "other"})
(True, False, False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from streamproc.config import PipelineConfig
from streamproc.errors import DeliveryError
from streamproc.kafka.aio import AsyncRecordConsumer
from streamproc.kafka.clients import EventProducer, RecordConsumer, RegistryConnection
from streamproc.kafka.configuration import Connection
from streamproc.pipeline import records
from streamproc.types import Alert, Severity


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


class AlertPublisher:
    """Stamped alerts onto an alerts topic exactly as the stream processor writes them: the
    Avro ``Alert`` record under the topic's subject (registered as the processor registers
    it), keyed by model, type and feature (:func:`streamproc.pipeline.records.alert`), so a
    subscriber cannot tell who raised one.

    A call queues the record and returns without waiting for the broker. It raises
    :class:`~streamproc.errors.KafkaError` when the record cannot be queued, and
    :class:`~streamproc.errors.DeliveryError` when the broker's reports say earlier alert
    records were not delivered (those are lost). :meth:`close` flushes."""

    def __init__(self, bootstrap: Connection, registry_url: RegistryConnection, topic: str) -> None:
        self.topic = topic
        self.producer = EventProducer(bootstrap, registry_url, topic, schema="Alert")

    @classmethod
    def for_pipeline(cls, cfg: PipelineConfig) -> AlertPublisher:
        """The publisher to ``cfg``'s alerts topic (created if missing, as ``run`` does)."""
        from streamproc.kafka.topics import ensure_pipeline_topics

        ensure_pipeline_topics(cfg, kinds={"alerts"})
        return cls(cfg.kafka, cfg.registry, cfg.topics.alerts)

    def __call__(self, alert: Alert) -> None:
        rec = records.alert(alert, topic=self.topic, schema_id=self.producer.schema_id)
        self.producer.send_raw(rec.value, rec.key)
        failed = self.producer.failures()
        if failed:
            raise DeliveryError(f"{len(failed)} alert records were not delivered: {failed[:3]}",
                                topic=self.topic)  # fmt: skip

    def close(self) -> None:
        """Wait for the queued alerts (raising for those not delivered), then disconnect."""
        self.producer.close()
