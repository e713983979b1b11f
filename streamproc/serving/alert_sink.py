"""Alerts raised outside the stream processor (``streamproc serve``) onto the pipeline's
alerts topic, in the processor's own form: :class:`AlertPublisher`."""

from __future__ import annotations

from streamproc.config import PipelineConfig
from streamproc.errors import DeliveryError
from streamproc.kafka.clients import EventProducer, RegistryConnection
from streamproc.kafka.configuration import Connection
from streamproc.pipeline import records
from streamproc.types import Alert


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
