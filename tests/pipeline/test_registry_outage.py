"""A registry outage pauses processing; it never turns good events into dead letters."""

from __future__ import annotations

import threading
from urllib.parse import urlparse

import pytest

from streamproc.loadgen import produce_synthetic
from streamproc.telemetry import Sensor

from .proxy import TcpProxy

pytestmark = pytest.mark.kafka


class RetryWatch(Sensor):
    def __init__(self) -> None:
        self.retries = 0
        self.retrying = threading.Event()

    def on_registry_retry(self, attempt: int, delay_s: float) -> None:
        self.retries = attempt
        if attempt >= 3:
            self.retrying.set()


def test_outage_waits_then_scores_everything(
    schema_registry, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    url = urlparse(schema_registry)
    proxy = TcpProxy(url.hostname, url.port)
    try:
        cfg = pipeline_config_factory()
        cfg = cfg.with_overrides(registry=cfg.registry.model_copy(
            update={"url": f"http://127.0.0.1:{proxy.port}{url.path}"}))  # fmt: skip
        watch = RetryWatch()
        running = processor_factory(cfg, extra_sensor=watch)  # registers its schemas: up
        proxy.cut()
        # Events whose writer schema the processor has not fetched yet.
        report = produce_synthetic(event_producer_factory(cfg.topics.input), 200, seed=8)
        assert watch.retrying.wait(60), "processor never retried the registry"
        assert running.processor.counters.events_in == 0  # nothing committed meanwhile
        proxy.restore()
        preds = read_topic(cfg.topics.predictions, report.good)
        running.stop()
        assert len({p.value["event_id"] for p in preds}) == 200
        assert read_topic(cfg.topics.dlq, 1, idle_s=2) == []
    finally:
        proxy.close()
