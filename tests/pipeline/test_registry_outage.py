"""A registry outage pauses processing; it never turns good events into dead letters."""

from __future__ import annotations

import threading
import uuid
from typing import Any
from urllib.parse import urlparse

import pytest

from streamproc import schemas
from streamproc.loadgen import produce_synthetic
from streamproc.telemetry import Sensor

from .proxy import TcpProxy

pytestmark = pytest.mark.kafka


def unseen_schema() -> dict[str, Any]:
    """Transaction with one more optional field: a writer schema registered after the
    processor started (it fetched the subject's latest schema at start-up, not this one)."""
    schema = schemas.schema_dict("Transaction")
    schema["fields"].append({"name": f"note_{uuid.uuid4().hex[:6]}",
                             "type": ["null", "string"], "default": None})  # fmt: skip
    return schema


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
        producer = event_producer_factory(cfg.topics.input, schema=unseen_schema())
        report = produce_synthetic(producer, 200, seed=8)
        assert watch.retrying.wait(60), "processor never retried the registry"
        assert running.processor.counters.events_in == 0  # nothing committed meanwhile
        proxy.restore()
        preds = read_topic(cfg.topics.predictions, report.good)
        running.stop()
        assert len({p.value["event_id"] for p in preds}) == 200
        assert read_topic(cfg.topics.dlq, 1, idle_s=2) == []
    finally:
        proxy.close()


def test_a_rebalance_during_an_outage_is_not_blocked_and_loses_nothing(
    schema_registry, pipeline_config_factory, processor_factory, event_producer_factory, read_topic
):
    # Processor a reaches the registry through a proxy that goes down; processor b reaches
    # it directly. b joining makes the group rebalance while a waits for the registry: a
    # must give its partitions up at once (its waiting batch uncommitted, for b or for a
    # later to replay), not hold the rebalance until the registry is back.
    url = urlparse(schema_registry)
    proxy = TcpProxy(url.hostname, url.port)
    try:
        cfg = pipeline_config_factory(partitions=2)
        via_proxy = cfg.registry.model_copy(
            update={"url": f"http://127.0.0.1:{proxy.port}{url.path}"})  # fmt: skip
        watch = RetryWatch()
        a = processor_factory(cfg.with_overrides(instance_id="a", registry=via_proxy),
                              extra_sensor=watch)  # fmt: skip
        proxy.cut()
        producer = event_producer_factory(cfg.topics.input, schema=unseen_schema())
        report = produce_synthetic(producer, 200, seed=8)
        assert watch.retrying.wait(60), "processor a never retried the registry"
        b = processor_factory(cfg.with_overrides(instance_id="b"))
        early = read_topic(cfg.topics.predictions, 1, idle_s=45)
        # Only b can score while the registry is cut off from a.
        assert early, "no predictions while a waited: the rebalance was held up"
        assert a.processor.counters.events_in == 0
        proxy.restore()
        preds = read_topic(cfg.topics.predictions, report.good)
        a.stop()
        b.stop()
        assert len({p.value["event_id"] for p in preds}) == 200
        assert read_topic(cfg.topics.dlq, 1, idle_s=2) == []
    finally:
        proxy.close()
