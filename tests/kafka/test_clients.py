"""The user-facing clients against the real broker and registry (the README's examples)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from streamproc import synth
from streamproc.errors import DeliveryError
from streamproc.kafka.aio import AsyncRecordConsumer
from streamproc.kafka.clients import EventProducer, PredictionConsumer

pytestmark = pytest.mark.kafka


def test_producer_then_sync_and_async_prediction_consumers(
    kafka, schema_registry, pipeline_config_factory, processor_factory
):
    cfg = pipeline_config_factory()
    records, _ = synth.generate(100, seed=1)
    with EventProducer(kafka, schema_registry, cfg.topics.input) as producer:
        for r in records:
            producer.send(r, key=r["account_id"], headers=[("origin", b"test")])
    running = processor_factory(cfg)

    consumer = PredictionConsumer(kafka, schema_registry, cfg.topics.predictions)
    got = []
    while len(got) < 100:
        batch = consumer.predictions(timeout_s=10)
        assert batch, "no predictions arrived"
        got.extend(batch)
    consumer.close()
    assert {p.event_id for p in got} == {r["event_id"] for r in records}
    assert all(p.model_version == "1.0.0" and p.label in ("legit", "fraud") for p in got)
    assert all(p.lineage["model"] == "fraud" and p.lineage["version"] == "1.0.0" for p in got)

    async def read_async():
        seen = []
        async with AsyncRecordConsumer(
            kafka, schema_registry, cfg.topics.predictions, where=lambda r: r["label"] == "legit"
        ) as c:
            async for _msg, rec in c:
                seen.append(rec)
                if len(seen) == sum(p.label == "legit" for p in got):
                    return seen
        return seen

    legit = asyncio.run(asyncio.wait_for(read_async(), 60))
    running.stop()
    assert {r["event_id"] for r in legit} == {p.event_id for p in got if p.label == "legit"}


def test_delivery_failure_is_raised_with_the_topic(kafka, schema_registry):
    topic = f"missing-{uuid.uuid4().hex[:8]}"  # the broker does not auto-create topics
    producer = EventProducer(kafka, schema_registry, topic, **{"message.timeout.ms": 1500})
    producer.send(synth.generate(1)[0][0])
    with pytest.raises(DeliveryError, match=topic):
        producer.flush(timeout_s=10)
